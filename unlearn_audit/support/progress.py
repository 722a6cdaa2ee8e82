"""Progress on stderr: rich bars on a terminal; in a log (CI, SLURM, nohup) a line every ~30 s with the
items done, the rate and the time left, and one when a task finishes."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

LOG_EVERY = 30.0
"""Seconds between progress lines when stderr is not a terminal."""


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class PlainReporter:
    """Progress for logs: a line every ``every`` seconds while a task runs (done/total, rate, ETA), and one
    when it finishes. ``clock`` is injectable for tests."""

    def __init__(self, console: Console, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.every, self.clock = console, every, clock

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def task(self, description: str, total: int) -> Callable[[int], None]:
        state = {"done": 0, "start": self.clock(), "last": self.clock()}

        def advance(n: int) -> None:
            state["done"] += n
            now = self.clock()
            elapsed = now - state["start"]
            if state["done"] >= total:
                self.console.print(f"{description}: {total} items in {elapsed:.1f}s", soft_wrap=True)
            elif now - state["last"] >= self.every and state["done"]:
                state["last"] = now
                rate = state["done"] / elapsed if elapsed > 0 else 0.0
                left = (total - state["done"]) / rate if rate else float("nan")
                self.console.print(f"{description}: {state['done']}/{total} items, {rate:.2f} items/s, "
                                   f"about {_duration(left)} left", soft_wrap=True)

        return advance

    def note(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)


class RichReporter:
    """Progress bars on stderr while an audit runs (with the time left)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        task_id = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task_id, n)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/]")


def reporter_for(console: Console) -> RichReporter | PlainReporter:
    """Bars on a terminal, timed lines in a log."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console)
