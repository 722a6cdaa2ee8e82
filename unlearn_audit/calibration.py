"""Calibration text for calibrated quantizers (GPTQ, AWQ).

By default a generic English corpus shipped with the tool (``resources/calibration.txt``: short
paragraphs on everyday topics written for this project, unrelated to any forget set). The forget set
is used only when the user asks (``--calibration forget``): calibrating on the very text that was
unlearned is a stronger attack, and the report says which text was used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError

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

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8") + b"\0")
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the record keeps: enough to tell two calibrations apart and to redo one."""
        return {"source": self.source, "texts": len(self.texts), "characters": sum(map(len, self.texts)),
                "max_tokens": self.max_tokens, "sha256": self.sha256}


def split_paragraphs(text: str) -> tuple[str, ...]:
    """Paragraphs separated by blank lines, each with its inner line breaks kept."""
    return tuple(p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip())


def generic_texts() -> tuple[str, ...]:
    return split_paragraphs(resources.files("unlearn_audit").joinpath("resources/calibration.txt")
                            .read_text(encoding="utf-8"))


def calibration_set(choice: str, forget_texts: list[str] | None = None, max_tokens: int = 512) -> CalibrationSet:
    """``generic`` (default), ``forget`` (the forget set's VerbMem passages, only when asked), or a path
    to a UTF-8 text file whose paragraphs (separated by blank lines) are the calibration samples."""
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
    if not path.is_file():
        raise UsageError(f"calibration '{choice}' is neither 'generic', 'forget' nor a file",
                         "pass --calibration generic, --calibration forget, or the path of a text file")
    try:
        texts = split_paragraphs(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"calibration file {path} is not UTF-8 text", "save it as UTF-8 plain text") from None
    if not texts:
        raise InputError(f"calibration file {path} holds no text", "put paragraphs separated by blank lines in it")
    return CalibrationSet(str(path), texts, max_tokens)
