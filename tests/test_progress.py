"""Progress in logs: a line every ~30 s with the rate and the time left, one when a task ends."""

from __future__ import annotations

import io

from rich.console import Console

from unlearn_audit.support.progress import PlainReporter


def test_log_lines_every_interval_with_rate_and_eta():
    now = [0.0]
    buffer = io.StringIO()
    reporter = PlainReporter(Console(file=buffer, width=200), every=30.0, clock=lambda: now[0])
    advance = reporter.task("unlearned · full precision", 100)
    for _ in range(10):  # 10 items in 20 s: no line yet
        now[0] += 2.0
        advance(1)
    assert buffer.getvalue() == ""
    now[0] += 10.0  # 11 items at 30 s: 0.37 items/s, 89 left -> 243 s
    advance(1)
    assert buffer.getvalue().strip() == "unlearned · full precision: 11/100 items, 0.37 items/s, about 4m03s left"
    for _ in range(89):
        advance(1)
    assert buffer.getvalue().strip().splitlines()[-1] == "unlearned · full precision: 100 items in 30.0s"
