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
               max_items: int | None = None, *, mapping: dict[str, str] | None = None,
               section: str | None = None) -> dict[str, list[str]]:
    """The ``columns`` of one split as lists of strings, keyed by the role names in ``columns``; ``mapping``
    gives the dataset's column for a role (the spec's ``columns``), ``section`` the spec section (and probe)
    that reads them, for the error message."""
    mapping = mapping or {}
    files = _split_files(folder, config, split)
    if not files:
        alt = OLD_SPLIT_NAMES.get(split)
        files = _split_files(folder, config, alt) if alt else []
    if not files:
        available = sorted({p.name.split("-")[0].split(".")[0] for p in _config_dir(folder, config).glob("*")
                            if p.suffix in (".parquet", ".jsonl", ".json")})
        if not available:
            raise InputError(f"dataset {folder.name} has no config '{config}'",
                             "check the dataset layout (<config>/<split>-*.parquet, <config>/<split>.jsonl, or config "
                             "'.' for files at the root) or the spec's config names")
        raise InputError(f"dataset config '{config}' has no split '{split}' (it has: {', '.join(available)})",
                         "fix the split name in the spec")
    rows = [_read_file(f) for f in files]
    names = rows[0][1]
    wanted = [mapping.get(c, c) for c in columns]
    for role, column in zip(columns, wanted):
        if column not in names:
            mapped = f" (mapped to '{column}')" if column != role else ""
            where = f"{section} " if section else ""
            fix = (f"map it in the spec: {section}: {{columns: {{{role}: <one of those>}}}}" if section
                   else "use a dataset in MUSE's layout")
            raise InputError(f"{where}needs column '{role}'{mapped} in {config}/{split}, which has: {', '.join(names)}",
                             fix)
    out: dict[str, list[str]] = {c: [] for c in columns}
    for table, _ in rows:
        for role, column in zip(columns, wanted):
            out[role].extend("" if v is None else str(v) for v in table[column])
    if not out[columns[0]]:
        raise InputError(f"{config}/{split} is empty", "the forget-set split must hold at least one row")
    if max_items is not None:
        out = {c: v[:max_items] for c, v in out.items()}
    return out


def _config_dir(folder: Path, config: str) -> Path:
    """Where a config's files lie: its folder, or the repo's root for config ``.``."""
    return folder if config in ("", ".") else folder / config


def _split_files(folder: Path, config: str, split: str) -> list[Path]:
    base = _config_dir(folder, config)
    return (sorted(base.glob(f"{split}-*.parquet")) + sorted(base.glob(f"{split}.parquet"))
            + sorted(base.glob(f"{split}.jsonl")) + sorted(base.glob(f"{split}.json")))


def _read_file(path: Path) -> tuple[dict[str, list[Any]], list[str]]:
    """A parquet, JSON Lines or JSON (a list of objects, or JSON Lines under a .json name) file as columns, and
    its column names in order."""
    import json

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {name: table.column(name).to_pylist() for name in table.column_names}, table.column_names
    def lines(text: str) -> list[Any]:
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            records = lines(text)
        else:
            try:
                records = json.loads(text)
            except json.JSONDecodeError:  # JSON Lines named .json (TOFU's files; the Hub's JSON loader reads both)
                records = lines(text)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path.name}: {exc}", "fix or re-download the dataset file") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path.name} is not a list of records", "give one JSON object per row")
    names: list[str] = []
    for record in records:
        names += [k for k in record if k not in names]
    return {name: [r.get(name) for r in records] for name in names}, names


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
    patterns = ["README.md", "*.yaml"]
    for c in configs:
        if c in ("", "."):  # files at the root: only the named splits'
            splits = {spec.verbmem.split, spec.knowmem_forget.split, spec.knowmem_forget.icl_split,
                      spec.knowmem_retain.split, spec.knowmem_retain.icl_split, spec.privleak.forget_split,
                      spec.privleak.holdout_split, spec.holdout.split}
            patterns += [f"{s}{ext}" for s in sorted(splits) for ext in ("-*.parquet", ".parquet", ".jsonl", ".json")]
        else:
            patterns += [f"{c}/*.parquet", f"{c}/*.jsonl", f"{c}/*.json"]
    return patterns


def load_forget_data(folder: Path, spec: ForgetSpec, max_items: int | None = None) -> ForgetData:
    """Every probe's data, read before any model loads (a column a probe needs and the data lacks is one line
    naming the spec section, the column and the fix)."""
    vm = read_split(folder, spec.verbmem.config, spec.verbmem.split, ["prompt", "gt"], max_items,
                    mapping=spec.verbmem.columns, section="verbmem")

    def qa(s, section: str) -> QASet:  # noqa: ANN001
        items = read_split(folder, s.config, s.split, ["question", "answer"], max_items, mapping=s.columns,
                           section=section)
        icl = read_split(folder, s.config, s.icl_split, ["question", "answer"], mapping=s.columns, section=section)
        return QASet(items["question"], items["answer"], icl["question"], icl["answer"])

    pl = spec.privleak
    forget = read_split(folder, pl.config, pl.forget_split, ["text"], max_items, mapping=pl.columns,
                        section="privleak")["text"]
    holdout = read_split(folder, pl.config, pl.holdout_split, ["text"], max_items, mapping=pl.columns,
                         section="privleak")["text"]
    floor = read_split(folder, spec.holdout.config, spec.holdout.split, ["text"], max_items,
                       mapping=spec.holdout.columns, section="holdout")["text"]
    return ForgetData(vm["prompt"], vm["gt"], qa(spec.knowmem_forget, "knowmem_forget"),
                      qa(spec.knowmem_retain, "knowmem_retain"), forget, holdout,
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
