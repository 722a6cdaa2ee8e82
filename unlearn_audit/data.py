"""Forget-set data in MUSE's Hub layout: ``<config>/<split>-*.parquet`` in a dataset repo or folder."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from pathlib import Path

from .errors import InputError
from .spec import ForgetSpec

OLD_SPLIT_NAMES = {"retain_qa": "retain2_qa", "retain_qa_icl": "retain2_qa_icl", "retain": "retain2"}
"""Names that older MUSE snapshots used, accepted in place of the current ones."""


def read_split(folder: Path, config: str, split: str, columns: list[str],
               max_items: int | None = None) -> dict[str, list[str]]:
    """The ``columns`` of one split as lists of strings."""
    import pyarrow.parquet as pq

    files = _split_files(folder, config, split)
    if not files:
        alt = OLD_SPLIT_NAMES.get(split)
        files = _split_files(folder, config, alt) if alt else []
    if not files:
        available = sorted({p.name.split("-")[0] for p in (folder / config).glob("*.parquet")})
        if not available:
            raise InputError(f"dataset {folder.name} has no config '{config}'",
                             "check the dataset layout (<config>/<split>-*.parquet) or the spec's config names")
        raise InputError(f"dataset config '{config}' has no split '{split}' (it has: {', '.join(available)})",
                         "fix the split name in the spec")
    tables = [pq.read_table(f) for f in files]
    names = tables[0].column_names
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f"{config}/{split} lacks column(s) {', '.join(missing)} (it has: {', '.join(names)})",
                         "use a dataset in MUSE's layout")
    out: dict[str, list[str]] = {c: [] for c in columns}
    for table in tables:
        for c in columns:
            out[c].extend("" if v is None else str(v) for v in table.column(c).to_pylist())
    if not out[columns[0]]:
        raise InputError(f"{config}/{split} is empty", "the forget-set split must hold at least one row")
    if max_items is not None:
        out = {c: v[:max_items] for c, v in out.items()}
    return out


def _split_files(folder: Path, config: str, split: str) -> list[Path]:
    return sorted((folder / config).glob(f"{split}-*.parquet")) + sorted((folder / config).glob(f"{split}.parquet"))


@dataclass(frozen=True)
class QASet:
    """KnowMem items and the in-context examples that precede each question."""

    questions: list[str]
    answers: list[str]
    icl_questions: list[str]
    icl_answers: list[str]


@dataclass(frozen=True)
class ForgetData:
    """Everything the probes read, loaded once."""

    verbmem_prompts: list[str]
    verbmem_refs: list[str]
    knowmem_forget: QASet
    knowmem_retain: QASet
    privleak_forget: list[str]
    privleak_holdout: list[str]
    holdout_texts: list[str] = field(default_factory=list)
    """Held-out texts for the VerbMem floor (the spec's ``holdout``), before cutting."""
    holdout_prompts: list[str] = field(default_factory=list)
    holdout_refs: list[str] = field(default_factory=list)
    """The held-out texts cut as VerbMem items are (see :func:`cut_like_verbmem`)."""

    def texts(self) -> dict[str, list[str]]:
        """Every text the probes read, by part (what the result cache keys on)."""
        return {"verbmem_prompts": self.verbmem_prompts, "verbmem_refs": self.verbmem_refs,
                **{f"{name}_{part}": getattr(qa, part) for name, qa in (("knowmem_forget", self.knowmem_forget),
                                                                     ("knowmem_retain", self.knowmem_retain))
                   for part in ("questions", "answers", "icl_questions", "icl_answers")},
                "privleak_forget": self.privleak_forget, "privleak_holdout": self.privleak_holdout,
                "holdout_prompts": self.holdout_prompts, "holdout_refs": self.holdout_refs}

    def counts(self) -> dict[str, int]:
        return {"verbmem": len(self.verbmem_prompts), "knowmem_forget": len(self.knowmem_forget.questions),
                "knowmem_retain": len(self.knowmem_retain.questions),
                "privleak_forget": len(self.privleak_forget), "privleak_holdout": len(self.privleak_holdout),
                "verbmem_holdout": len(self.holdout_prompts)}


def dataset_patterns(spec: ForgetSpec) -> list[str]:
    """The files of a dataset repo an audit reads: only the configs the spec names, and the card."""
    configs = sorted({spec.verbmem.config, spec.knowmem_forget.config, spec.knowmem_retain.config,
                      spec.privleak.config, spec.holdout.config})
    return ["README.md", "*.yaml"] + [f"{c}/*.parquet" for c in configs]


def load_forget_data(folder: Path, spec: ForgetSpec, max_items: int | None = None) -> ForgetData:
    vm = read_split(folder, spec.verbmem.config, spec.verbmem.split, ["prompt", "gt"], max_items)

    def qa(s) -> QASet:  # noqa: ANN001
        items = read_split(folder, s.config, s.split, ["question", "answer"], max_items)
        icl = read_split(folder, s.config, s.icl_split, ["question", "answer"])
        return QASet(items["question"], items["answer"], icl["question"], icl["answer"])

    pl = spec.privleak
    forget = read_split(folder, pl.config, pl.forget_split, ["text"], max_items)["text"]
    holdout = read_split(folder, pl.config, pl.holdout_split, ["text"], max_items)["text"]
    floor = read_split(folder, spec.holdout.config, spec.holdout.split, ["text"], max_items)["text"]
    return ForgetData(vm["prompt"], vm["gt"], qa(spec.knowmem_forget), qa(spec.knowmem_retain), forget, holdout,
                      holdout_texts=floor)


def cut_like_verbmem(data: ForgetData, tokenizer: Any, max_new_tokens: int = 128) -> ForgetData:
    """The held-out texts cut the way VerbMem items are: a prompt of the median VerbMem prompt length
    in tokens, then the text's continuation as the reference (VerbMem scores its first ``max_new_tokens``
    tokens). Texts too short to leave a continuation of 8 tokens are left out."""
    import statistics

    lengths = [len(ids) for ids in tokenizer(data.verbmem_prompts, add_special_tokens=False)["input_ids"]]
    width = max(1, int(statistics.median(lengths))) if lengths else 32
    prompts, refs = [], []
    for ids in tokenizer(data.holdout_texts, add_special_tokens=False)["input_ids"]:
        if len(ids) >= width + 8:
            prompts.append(tokenizer.decode(ids[:width], skip_special_tokens=True))
            refs.append(tokenizer.decode(ids[width:width + max_new_tokens], skip_special_tokens=True))
    return replace(data, holdout_prompts=prompts, holdout_refs=refs)
