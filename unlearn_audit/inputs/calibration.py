"""Calibration text for calibrated quantizers (GPTQ, AWQ).

By default a generic English corpus shipped with the tool (``resources/calibration.txt``: short
paragraphs on everyday topics written for this project, unrelated to any forget set). The forget set
is used only when the user asks (``--calibration forget``): calibrating on the very text that was
unlearned is a stronger attack, and the report says which text was used. A Hub dataset
(``org/name[:config[:split[:column]]]``, resolved like every other repo, its commit recorded) gives the
calibration GPTQ users usually run (e.g. ``Salesforce/wikitext:wikitext-2-raw-v1:train:text``).

GPT-QModel recommends at least 256 samples averaging 256 tokens (65 536 tokens); the shipped corpus is far
smaller (about 3.3k tokens), so an audit with less says so (:func:`shortfall`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError

GENERIC = "generic"
FORGET = "forget"


@dataclass(frozen=True)
class CalibrationSet:
    """The texts a calibrated quantizer sees, and where they came from."""

    source: str
    """``generic``, ``forget``, or the path of a user's file."""
    texts: tuple[str, ...]
    max_tokens: int = 512
    """Each text is cut to this many tokens (and to the model's context)."""
    repo: dict[str, Any] | None = None
    """The resolved Hub dataset (id, config, split, column, commit) when the text came from one."""

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8") + b"\0")
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the record keeps: enough to tell two calibrations apart and to redo one."""
        described = {"source": self.source, "texts": len(self.texts), "characters": sum(map(len, self.texts)),
                     "max_tokens": self.max_tokens, "sha256": self.sha256}
        return described if self.repo is None else {**described, "dataset": self.repo}


RECOMMENDED_SAMPLES = 256
RECOMMENDED_AVERAGE_TOKENS = 256
"""GPT-QModel's own floor (``looper/loop_processor.py``): at least 256 samples averaging 256 tokens."""
HUB_SAMPLES = 256
"""Rows taken from a Hub calibration dataset (its first non-empty texts)."""


def token_count(calibration: CalibrationSet, tokenizer: Any) -> tuple[int, int]:
    """(samples, tokens) the quantizer will see: each text tokenized and cut as :meth:`quantize` cuts it."""
    samples = tokens = 0
    for text in calibration.texts:
        n = min(len(tokenizer(text)["input_ids"]), calibration.max_tokens)
        if n >= 2:
            samples, tokens = samples + 1, tokens + n
    return samples, tokens


def shortfall(calibration: CalibrationSet, tokenizer: Any) -> str | None:
    """A warning when the calibration is smaller than GPT-QModel recommends, else None."""
    samples, tokens = token_count(calibration, tokenizer)
    floor = RECOMMENDED_SAMPLES * RECOMMENDED_AVERAGE_TOKENS
    if samples >= RECOMMENDED_SAMPLES and tokens >= floor:
        return None
    return (f"GPTQ/AWQ calibration ({calibration.source}) has {samples} samples and {tokens} tokens, fewer than the "
            f"{RECOMMENDED_SAMPLES} samples of {RECOMMENDED_AVERAGE_TOKENS} tokens on average ({floor} tokens) "
            "GPT-QModel recommends; a user's larger calibration can quantize differently "
            "(pass --calibration with a Hub dataset, e.g. Salesforce/wikitext:wikitext-2-raw-v1:train:text)")


def parse_hub_calibration(choice: str) -> tuple[str, str | None, str, str]:
    """``org/name[:config[:split[:column]]]`` -> (repo id, config or None, split, column)."""
    repo, *rest = choice.split(":")
    if repo.count("/") != 1 or len(rest) > 3 or any(not part for part in rest):
        raise UsageError(f"calibration '{choice}' is not org/name[:config[:split[:column]]]",
                         "e.g. --calibration Salesforce/wikitext:wikitext-2-raw-v1:train:text")
    config = rest[0] if rest else None
    split = rest[1] if len(rest) > 1 else "train"
    column = rest[2] if len(rest) > 2 else "text"
    return repo, config, split, column


def hub_patterns(config: str | None, split: str) -> list[str]:
    """The files of one split in the layouts the Hub uses: parquet under the config's folder (or ``data/``),
    one file or shards; JSON Lines / JSON named after the split."""
    folders = [config] if config else ["data", "."]
    patterns = []
    for folder in folders:
        prefix = "" if folder == "." else f"{folder}/"
        patterns += [f"{prefix}{split}-*.parquet", f"{prefix}{split}.parquet", f"{prefix}{split}/*.parquet",
                     f"{prefix}{split}.jsonl", f"{prefix}{split}.json"]
    return patterns


def read_hub_texts(folder: Path, config: str | None, split: str, column: str, limit: int) -> list[str]:
    """The first ``limit`` non-empty values of ``column`` in the split's files (see :func:`hub_patterns`)."""
    import fnmatch
    import json

    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and any(fnmatch.fnmatch(p.relative_to(folder).as_posix(), pat.removeprefix("./"))
                           for pat in hub_patterns(config, split)))
    if not files:
        where = f"config '{config}' " if config else ""
        raise InputError(f"calibration dataset {folder.name} has no {where}split '{split}' in a layout this tool "
                         "reads (<config>/<split>-*.parquet, data/<split>-*.parquet, <split>.jsonl)",
                         "name the config and split: --calibration org/name:config:split:column")
    texts: list[str] = []
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(file)
            if column not in table.column_names:
                raise InputError(f"calibration split '{split}' has no column '{column}' (it has: "
                                 f"{', '.join(table.column_names)})", "name the text column: org/name:config:split:COLUMN")
            values = table.column(column).to_pylist()
        else:
            lines = file.read_text(encoding="utf-8").splitlines() if file.suffix == ".jsonl" else None
            rows = [json.loads(line) for line in lines if line.strip()] if lines is not None \
                else json.loads(file.read_text(encoding="utf-8"))
            if rows and column not in rows[0]:
                raise InputError(f"calibration split '{split}' has no column '{column}' (it has: "
                                 f"{', '.join(rows[0])})", "name the text column: org/name:config:split:COLUMN")
            values = [row.get(column) for row in rows]
        texts += [str(v).strip() for v in values if v is not None and str(v).strip()]
        if len(texts) >= limit:
            break
    if not texts:
        raise InputError(f"calibration split '{split}' column '{column}' holds no text", "choose a text column")
    return texts[:limit]


def split_paragraphs(text: str) -> tuple[str, ...]:
    """Paragraphs separated by blank lines, each with its inner line breaks kept."""
    return tuple(p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip())


def generic_texts() -> tuple[str, ...]:
    return split_paragraphs(resources.files("unlearn_audit").joinpath("resources/calibration.txt")
                            .read_text(encoding="utf-8"))


def calibration_set(choice: str, forget_texts: list[str] | None = None, max_tokens: int = 512, *,
                    resolve_dataset: Callable[..., Any] | None = None) -> CalibrationSet:
    """``generic`` (default), ``forget`` (the forget set's VerbMem passages, only when asked), a path
    to a UTF-8 text file whose paragraphs (separated by blank lines) are the calibration samples, or a Hub
    dataset ``org/name[:config[:split[:column]]]`` (fetched through ``resolve_dataset``, the audit's
    resolver: only the split's files)."""
    if max_tokens < 16:
        raise UsageError(f"calibration length {max_tokens} tokens is too short", "use at least 16, e.g. 512")
    if choice == GENERIC:
        return CalibrationSet(GENERIC, generic_texts(), max_tokens)
    if choice == FORGET:
        texts = tuple(t for t in (forget_texts or []) if t.strip())
        if not texts:
            raise InputError("--calibration forget needs forget-set passages, and this forget set has none",
                             "use --calibration generic or a text file")
        return CalibrationSet(FORGET, texts, max_tokens)
    path = Path(choice)
    if not path.is_file() and "/" in choice and not choice.startswith((".", "/", "~")):
        repo_id, config, split, column = parse_hub_calibration(choice)
        if resolve_dataset is None:
            from .hub import resolve as resolve_dataset
        repo = resolve_dataset(repo_id, kind="dataset", patterns=hub_patterns(config, split) + ["README.md"])
        texts = read_hub_texts(repo.path, config, split, column, HUB_SAMPLES)
        return CalibrationSet(choice, tuple(texts), max_tokens,
                              repo={"repo_id": repo_id, "config": config, "split": split, "column": column,
                                    "commit": repo.commit, "rows": len(texts)})
    if not path.is_file():
        raise UsageError(f"calibration '{choice}' is neither 'generic', 'forget', a file nor a Hub dataset",
                         "pass --calibration generic, forget, the path of a text file, or org/name[:config:split:column]")
    try:
        texts = split_paragraphs(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"calibration file {path} is not UTF-8 text", "save it as UTF-8 plain text") from None
    if not texts:
        raise InputError(f"calibration file {path} holds no text", "put paragraphs separated by blank lines in it")
    return CalibrationSet(str(path), texts, max_tokens)
