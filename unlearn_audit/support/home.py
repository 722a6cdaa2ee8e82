"""Where the tool keeps what it builds (merged adapters, miniature worlds, results), from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$UNLEARN_AUDIT_HOME``, else ``~/.cache/unlearn_audit``: where the tool keeps what it builds."""
    base = os.environ.get("UNLEARN_AUDIT_HOME")
    return Path(base) if base else Path.home() / ".cache" / "unlearn_audit"


def default_dir() -> Path:
    """``$UNLEARN_AUDIT_RESULTS``, else ``<home>/results``."""
    base = os.environ.get("UNLEARN_AUDIT_RESULTS")
    return Path(base) if base else home() / "results"
