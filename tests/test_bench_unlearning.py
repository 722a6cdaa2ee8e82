"""benchmarks/bench_unlearning.py's own arithmetic: the run syntax, the paper grid, the paper's aggregate computed by
hand, and the diagnostic's confusion table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_unlearning as bench  # noqa: E402


def test_run_syntax_and_the_paper_grid():
    (r,) = bench.parse_runs("npo_klr:5e-5:bfloat16:steps=1000:batch=2:form=paper:sure=90", None)
    assert (r.method, r.lr, r.dtype, r.steps, r.batch_size, r.form, r.sure) == \
        ("npo_klr", 5e-5, "bfloat16", 1000, 2, "paper", 90.0)
    with pytest.raises(SystemExit, match="unknown run option 'warmup'"):
        bench.parse_runs("ga:1e-5:float32:warmup=3", None)
    grid = bench.parse_runs(bench.paper_grid(), None)
    assert len(grid) == 23 and len({g.name for g in grid}) == 23
    assert {g.method for g in grid if g.sure is None and g.steps == 1000} == set(bench.PAPER_METHODS)
    assert all(g.form == "paper" and g.batch_size == 2 for g in grid)
    assert {g.name for g in grid if g.steps == 3000} == {f"{m}-lr1e-05-bf16-s3000-b2-paper" for m in bench.CONSTRAINED}


def _row(method: str, verbmem: float, knowmem: float, fp4: tuple[float, float]) -> dict:
    cell = lambda v: {"value": v, "low": v, "high": v}  # noqa: E731
    return {"run": method, "method": method, "steps": 1000, "dtype": "bfloat16", "sure": None, "verdict": "FAIL",
            "values": {"original|full": {"verbmem_f": cell(100.0), "knowmem_f": cell(80.0)},
                       "original|bnb:fp4": {"verbmem_f": cell(50.0), "knowmem_f": cell(40.0)},
                       "unlearned|full": {"verbmem_f": cell(verbmem), "knowmem_f": cell(knowmem)},
                       "unlearned|bnb:fp4": {"verbmem_f": cell(fp4[0]), "knowmem_f": cell(fp4[1])}}}


def test_the_papers_aggregate_by_hand(capsys):
    """Mean over GA_GDR, GA_KLR, NPO_GDR of unlearned / target on VerbMem and KnowMem at the same precision:
    full (0/100 + 40/80 + 50/100 + 20/80 + 10/100 + 0/80) / 6 = 22.5%; 4-bit against the 4-bit target
    (50/50 + 40/40 + 25/50 + 20/40 + 50/50 + 40/40) / 6 = 83.3%."""
    rows = [_row("ga_gdr", 0, 40, (50, 40)), _row("ga_klr", 50, 20, (25, 20)), _row("npo_gdr", 10, 0, (50, 40)),
            _row("ga", 0, 0, (0, 0))]  # GA is not in the paper's mean
    bench.print_paper_table(rows)
    out = capsys.readouterr().out
    assert "- 1000 steps, bfloat16 (ga_gdr, ga_klr, npo_gdr): full 22%, 4-bit 83%" in out  # 22.5 rounds to even
    assert "| target | 4-bit | 50.0 [50.0, 50.0] | 40.0 [40.0, 40.0] |" in out


def test_diagnostic_confusion_counts_each_call():
    share = lambda v: {"value": v, "low": v, "high": v}  # noqa: E731
    rows = [{"verbmem_f": {"rtn:4": share(0.6)}, "knowmem_f": {}, "privleak": {},
             "diagnostic": {"rtn:4": {"reading": "probes decide", "same_code_of_moved": 0.97}}},
            {"verbmem_f": {"rtn:4": share(0.1)}, "knowmem_f": {}, "privleak": {},
             "diagnostic": {"rtn:4": {"reading": "probes decide", "same_code_of_moved": 0.5}}},
            {"verbmem_f": {"rtn:4": None}, "knowmem_f": {}, "privleak": {},
             "diagnostic": {"rtn:4": {"reading": "recovery certain", "same_code_of_moved": 1.0}}}]
    table = bench.diagnostic_confusion(rows, ["rtn:4"])
    assert table["reading: probes decide"] == {"recovers": 1, "holds": 1}
    assert table["reading: recovery certain"] == {"nothing removed": 1}
    assert table["same level >= 95%: yes"] == {"recovers": 1, "nothing removed": 1}
