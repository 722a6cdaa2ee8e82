"""Where an audit's progress goes: the :class:`Reporter` interface (the CLI shows rich progress bars on stderr) and
the library's silent default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Reporter(Protocol):
    """Where progress goes (the CLI shows rich progress bars on stderr; the library default is silent)."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def note(self, message: str) -> None: ...


class SilentReporter:
    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None

    def note(self, message: str) -> None:
        pass
