"""Forget-set data as the Hub lays it out: ``<config>/<split>-*.parquet`` (MUSE, WMDP, MMLU), ``<split>.json`` at the
root (TOFU), ``.jsonl``; read for the spec's benchmark (MUSE, TOFU or WMDP) before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from .spec import ForgetSpec

OLD_SPLIT_NAMES = {"retain_qa": "retain2_qa", "retain_qa_icl": "retain2_qa_icl", "retain": "retain2"}
"""Names that older MUSE snapshots used, accepted in place of the current ones."""


def read_split(folder: Path, config: str, split: str, columns: list[str],
               max_items: int | None = None, *, mapping: dict[str, str] | None = None,
               section: str | None = None, raw: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """The ``columns`` of one split as lists of strings (the roles in ``raw``: as stored, e.g. lists and
    integers), keyed by the role names in ``columns``; ``mapping`` gives the dataset's column for a role (the
    spec's ``columns``), ``section`` the spec section (and probe) that reads them, for the error message."""
    mapping = mapping or {}
    files = _split_files(folder, config, split)
    if not files:
        alt = OLD_SPLIT_NAMES.get(split)
        files = _split_files(folder, config, alt) if alt else []
    if not files:
        available = sorted({p.name.split("-")[0].split(".")[0] for p in _config_dir(folder, config).glob("*")
                            if p.suffix in (".parquet", ".jsonl", ".json")}
                           | {name for name, patterns in card_data_files(folder).get(config, {}).items()
                              if _mapped_files(folder, patterns)})
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
            out[role].extend(table[column] if role in raw else ("" if v is None else str(v) for v in table[column]))
    if not out[columns[0]]:
        raise InputError(f"{config}/{split} is empty", "the forget-set split must hold at least one row")
    if max_items is not None:
        out = {c: v[:max_items] for c, v in out.items()}
    return out


def _config_dir(folder: Path, config: str) -> Path:
    """Where a config's files lie: its folder, or the repo's root for config ``.``."""
    return folder if config in ("", ".") else folder / config


def card_data_files(folder: Path) -> dict[str, dict[str, list[str]]]:
    """The ``configs:`` mapping of a dataset card (``README.md`` metadata), as the Hub's dataset viewer and
    ``datasets.load_dataset`` read it: config name -> split -> file patterns. ``data_files`` given as a string or
    a list of strings is the split ``train``."""
    from .hub import card_metadata

    try:
        configs = card_metadata(folder).get("configs") or []
    except InputError:
        return {}
    out: dict[str, dict[str, list[str]]] = {}
    for entry in configs if isinstance(configs, list) else []:
        if not isinstance(entry, dict) or "config_name" not in entry:
            continue
        files = entry.get("data_files")
        splits: dict[str, list[str]] = {}
        if isinstance(files, str):
            splits["train"] = [files]
        elif isinstance(files, list):
            for item in files:
                if isinstance(item, str):
                    splits.setdefault("train", []).append(item)
                elif isinstance(item, dict) and "split" in item:
                    paths = item.get("path")
                    splits.setdefault(str(item["split"]), []).extend([paths] if isinstance(paths, str) else paths or [])
        out[str(entry["config_name"])] = splits
    return out


def _mapped_files(folder: Path, patterns: list[str]) -> list[Path]:
    return sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()})


def _split_files(folder: Path, config: str, split: str) -> list[Path]:
    mapped = _mapped_files(folder, card_data_files(folder).get(config, {}).get(split) or [])
    if mapped:  # the card's configs: mapping names the files (when they are there: else the folder's layout)
        return mapped
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
            if isinstance(records, dict):  # one JSON Lines record
                records = [records]
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
class TofuItems:
    """One TOFU set: each question, its answer, a paraphrase of it (forget and retain sets; empty for the
    real-authors and world-facts sets, whose answer is the reference) and its perturbed (wrong) answers."""

    questions: list[str]
    answers: list[str]
    paraphrased: list[str]
    perturbed: list[list[str]]
    shots: list[tuple[str, str]] = field(default_factory=list)
    """Solved questions asked before each one (the ``icl`` attack): (question, answer)."""


@dataclass(frozen=True)
class ChoiceItems:
    """Four-choice questions (WMDP, MMLU): the right choice's index, and the subject each prompt names."""

    questions: list[str]
    choices: list[list[str]]
    answers: list[int]
    subjects: list[str]
    shots: list[tuple[str, list[str], int]] = field(default_factory=list)
    """Solved questions before each one (the ``icl`` attack): (question, choices, right index)."""


_NO_QA = QASet([], [], [], [])


@dataclass(frozen=True)
class ForgetData:
    """Everything the probes read, loaded once: MUSE's fields, TOFU's sets or WMDP's questions, by ``benchmark``."""

    verbmem_prompts: list[str] = field(default_factory=list)
    verbmem_refs: list[str] = field(default_factory=list)
    knowmem_forget: QASet = _NO_QA
    knowmem_retain: QASet = _NO_QA
    privleak_forget: list[str] = field(default_factory=list)
    privleak_holdout: list[str] = field(default_factory=list)
    holdout_texts: list[str] = field(default_factory=list)
    """Held-out texts for the VerbMem floor (the spec's ``holdout``), before cutting."""
    holdout_prompts: list[str] = field(default_factory=list)
    holdout_refs: list[str] = field(default_factory=list)
    """The held-out texts cut as VerbMem items are (see :func:`cut_like_verbmem`)."""
    benchmark: str = "muse"
    tofu: dict[str, TofuItems] = field(default_factory=dict)
    """TOFU: ``forget`` and, when present, ``retain``, ``real_authors``, ``world_facts``."""
    wmdp: ChoiceItems | None = None
    mmlu: ChoiceItems | None = None
    """WMDP's utility set (MMLU subjects)."""

    def calibration_texts(self) -> list[str]:
        """Forget-set texts (``--calibration forget``): MUSE's PrivLeak texts, TOFU's forget QA, WMDP's questions."""
        if self.benchmark == "tofu":
            qa = self.tofu["forget"]
            return [f"{q} {a}" for q, a in zip(qa.questions, qa.answers)]
        if self.benchmark == "wmdp" and self.wmdp is not None:
            return [q + " " + " ".join(c) for q, c in zip(self.wmdp.questions, self.wmdp.choices)]
        return self.privleak_forget

    def texts(self) -> dict[str, list[str]]:
        """Every text the probes read, by part (what the result cache keys on)."""
        if self.benchmark == "tofu":
            return {f"tofu_{name}_{part}": [x if isinstance(x, str) else "\x1f".join(x) for x in getattr(items, part)]
                    for name, items in self.tofu.items() for part in ("questions", "answers", "paraphrased", "perturbed",
                                                                      "shots") if part != "shots" or items.shots}
        if self.benchmark == "wmdp":
            return {f"{name}_{part}": [x if isinstance(x, str) else "\x1f".join(map(str, x)) if isinstance(x, list)
                                       else str(x) for x in getattr(items, part)]
                    for name, items in (("wmdp", self.wmdp), ("mmlu", self.mmlu)) if items is not None
                    for part in ("questions", "choices", "answers", "subjects", "shots")
                    if part != "shots" or items.shots}
        return {"verbmem_prompts": self.verbmem_prompts, "verbmem_refs": self.verbmem_refs,
                **{f"{name}_{part}": getattr(qa, part) for name, qa in (("knowmem_forget", self.knowmem_forget),
                                                                     ("knowmem_retain", self.knowmem_retain))
                   for part in ("questions", "answers", "icl_questions", "icl_answers")},
                "privleak_forget": self.privleak_forget, "privleak_holdout": self.privleak_holdout,
                "holdout_prompts": self.holdout_prompts, "holdout_refs": self.holdout_refs}

    def counts(self) -> dict[str, int]:
        if self.benchmark == "tofu":
            return {f"tofu_{name}": len(items.questions) for name, items in self.tofu.items()}
        if self.benchmark == "wmdp":
            return {name: len(items.questions) for name, items in (("wmdp", self.wmdp), ("mmlu", self.mmlu))
                    if items is not None}
        return {"verbmem": len(self.verbmem_prompts), "knowmem_forget": len(self.knowmem_forget.questions),
                "knowmem_retain": len(self.knowmem_retain.questions),
                "privleak_forget": len(self.privleak_forget), "privleak_holdout": len(self.privleak_holdout),
                "verbmem_holdout": len(self.holdout_prompts)}


def _config_patterns(config: str, splits: set[str]) -> list[str]:
    if config in ("", "."):  # files at the root: only the named splits'
        return [f"{s}{ext}" for s in sorted(splits) for ext in ("-*.parquet", ".parquet", ".jsonl", ".json")]
    return [f"{config}/*.parquet", f"{config}/*.jsonl", f"{config}/*.json"]


def tofu_splits(spec: ForgetSpec) -> dict[str, str]:
    """TOFU's sets the spec names: set name -> split."""
    t = spec.tofu
    named = {"forget": t.perturbed_split(), "retain": t.retain_split, "real_authors": t.real_authors_split,
             "world_facts": t.world_facts_split}
    return {k: v for k, v in named.items() if v}


def dataset_patterns(spec: ForgetSpec) -> list[str]:
    """The files of a dataset repo an audit reads: only the configs the spec names, and the card."""
    if spec.benchmark == "tofu":
        return ["README.md", "*.yaml"] + _config_patterns(spec.tofu.config, set(tofu_splits(spec).values()))
    if spec.benchmark == "wmdp":
        return ["README.md", "*.yaml"] + _config_patterns(spec.wmdp.config, {spec.wmdp.split})
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


def card_patterns(folder: Path, spec: ForgetSpec) -> list[str]:
    """The files the dataset card's ``configs:`` mapping names for the spec's configs (fetched once the card is
    there: it comes with the first download)."""
    mapped = card_data_files(folder)
    if spec.benchmark == "tofu":
        named = {spec.tofu.config}
    elif spec.benchmark == "wmdp":
        named = {spec.wmdp.config}
    else:
        named = {spec.verbmem.config, spec.knowmem_forget.config, spec.knowmem_retain.config, spec.privleak.config,
                 spec.holdout.config}
    return sorted({p for c in named for paths in mapped.get(c, {}).values() for p in paths})


def utility_patterns(spec: ForgetSpec) -> list[str]:
    """The files of a WMDP audit's utility dataset (MMLU) it reads."""
    return ["README.md"] + [p for c in spec.mmlu.configs for p in _config_patterns(c, {spec.mmlu.split})]


def _bad(section: str, column: str, split: str, problem: str, fix: str) -> InputError:
    return InputError(f"{section} needs column '{column}' in {split} to be {problem}", fix)


def _tofu_items(folder: Path, spec: ForgetSpec, name: str, split: str, max_items: int | None) -> TofuItems:
    t = spec.tofu
    roles = ["question", "answer", "perturbed_answer"] + (["paraphrased_answer"] if name in ("forget", "retain") else [])
    cols = read_split(folder, t.config, split, roles, max_items, mapping=t.columns, section="tofu",
                      raw=("perturbed_answer",))
    perturbed = []
    for value in cols["perturbed_answer"]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise _bad("tofu", t.columns.get("perturbed_answer", "perturbed_answer"), split,
                       "a list of wrong answers (strings)", "give each row a list of perturbed answers, or map the "
                       "column in the spec: tofu: {columns: {perturbed_answer: <column>}}")
        perturbed.append(value)
    return TofuItems(cols["question"], cols["answer"], cols.get("paraphrased_answer", []), perturbed)


def _choice_items(folder: Path, section: str, s, config: str, split: str, max_items: int | None,  # noqa: ANN001
                  subject: str) -> ChoiceItems:
    roles = ["question", "choices", "answer"]
    cols = read_split(folder, config, split, roles, max_items, mapping=s.columns, section=section,
                      raw=("choices", "answer"))
    for choices in cols["choices"]:
        if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise _bad(section, s.columns.get("choices", "choices"), f"{config}/{split}", "a list of four strings",
                       "give each question four choices (A-D), as WMDP and MMLU do")
    for answer in cols["answer"]:
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < 4:
            raise _bad(section, s.columns.get("answer", "answer"), f"{config}/{split}",
                       "the right choice's index (0-3)", "store the answer as an integer index into choices")
    return ChoiceItems(cols["question"], cols["choices"], cols["answer"],
                       [subject.replace("_", " ")] * len(cols["question"]))


def load_forget_data(folder: Path, spec: ForgetSpec, max_items: int | None = None,
                     utility: Path | None = None) -> ForgetData:
    """Every probe's data, read before any model loads (a column a probe needs and the data lacks, or holds in
    the wrong type, is one line naming the spec section, the column and the fix). ``utility``: the folder of a
    WMDP audit's MMLU dataset."""
    if spec.benchmark == "tofu":
        return ForgetData(benchmark="tofu", tofu={name: _tofu_items(folder, spec, name, split, max_items)
                                                  for name, split in tofu_splits(spec).items()})
    if spec.benchmark == "wmdp":
        w, m = spec.wmdp, spec.mmlu
        wmdp = _choice_items(folder, "wmdp", w, w.config, w.split, max_items, w.subject)
        mmlu = None
        if utility is not None:
            parts = [_choice_items(utility, "mmlu", m, c, m.split, max_items, c) for c in m.configs]
            mmlu = ChoiceItems(*(sum((getattr(p, f) for p in parts), []) for f in
                                 ("questions", "choices", "answers", "subjects")))
        return ForgetData(benchmark="wmdp", wmdp=wmdp, mmlu=mmlu)
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

    if data.benchmark != "muse":
        return data
    lengths = [len(ids) for ids in tokenizer(data.verbmem_prompts, add_special_tokens=False)["input_ids"]]
    width = max(1, int(statistics.median(lengths))) if lengths else 32
    prompts, refs = [], []
    for ids in tokenizer(data.holdout_texts, add_special_tokens=False)["input_ids"]:
        if len(ids) >= width + 8:
            prompts.append(tokenizer.decode(ids[:width], skip_special_tokens=True))
            refs.append(tokenizer.decode(ids[width:width + max_new_tokens], skip_special_tokens=True))
    return replace(data, holdout_prompts=prompts, holdout_refs=refs)
