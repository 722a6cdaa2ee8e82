"""The verdict policy on hand-made figures, and the recovery arithmetic on hand-made probe outputs."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn_audit.analysis.figures import FULL, Analysis, Reference, Share, analyse
from unlearn_audit.analysis.statistics import Interval
from unlearn_audit.analysis.verdict import Decision, decide
from unlearn_audit.config import Thresholds
from unlearn_audit.probes.base import ItemScore, ProbeOutput


def _analysis(residual: tuple[float, float, float], recovery: tuple[float, float, float], gap: float = 50.0) -> Analysis:
    a = Analysis()
    a.gaps = {"verbmem_f": gap}
    a.residuals = [Share("verbmem_f", None, Interval(*residual))]
    a.recoveries = [Share("verbmem_f", "rtn:4:g128", Interval(*recovery))]
    return a


T = Thresholds(max_recovery=0.25, max_residual=0.5, min_gap=10, judged=("verbmem_f",))


@pytest.mark.parametrize("residual,recovery,decision", [
    ((0.1, 0.0, 0.2), (0.05, 0.0, 0.1), Decision.PASS),
    ((0.1, 0.0, 0.2), (0.9, 0.8, 1.0), Decision.FAIL),        # quantization brings it back
    ((0.8, 0.7, 0.9), (0.05, 0.0, 0.1), Decision.FAIL),       # never forgot at full precision
    ((0.1, 0.0, 0.2), (0.25, 0.1, 0.4), Decision.INCONCLUSIVE),  # interval straddles the threshold
    ((0.1, 0.0, 0.2), (float("nan"),) * 3, Decision.INCONCLUSIVE),  # recovery undefined
])
def test_policy(residual, recovery, decision):
    v = decide(_analysis(residual, recovery), T)
    assert v.decision is decision
    assert int(v.decision.exit_code) == {Decision.PASS: 0, Decision.FAIL: 1, Decision.INCONCLUSIVE: 4}[decision]


def test_fail_headline_names_the_variant_and_share():
    v = decide(_analysis((0.1, 0.0, 0.2), (0.94, 0.88, 0.98)), T, {"rtn:4:g128": "4-bit RTN (rtn:4:g128)"})
    assert v.headline.startswith("4-bit RTN (rtn:4:g128) brings back 94% [88%–98%] of the verbatim memory")


def test_original_that_never_knew_is_inconclusive():
    v = decide(_analysis((0.1, 0.0, 0.2), (0.9, 0.8, 1.0), gap=3.0), T)
    assert v.decision is Decision.INCONCLUSIVE
    assert "cannot be judged" in v.headline


def _mean_output(metric: str, scores: list[float]) -> ProbeOutput:
    return ProbeOutput(metric, "mean", [ItemScore(f"{metric}/{i}", s) for i, s in enumerate(scores)])


def test_recovery_and_residual_by_hand():
    # original 0.8 everywhere -> 80; unlearned 0.2 -> 20; Q(unlearned) 0.65 -> 65; retrain 0.1 -> 10
    # recovery = (65 - 20) / (80 - 20) = 0.75; residual = (20 - 10) / (80 - 10) = 1/7
    n = 20
    outputs = {
        "original": {FULL: {"verbmem_f": _mean_output("verbmem_f", [0.8] * n)},
                     "q": {"verbmem_f": _mean_output("verbmem_f", [0.8] * n)}},
        "unlearned": {FULL: {"verbmem_f": _mean_output("verbmem_f", [0.2] * n)},
                      "q": {"verbmem_f": _mean_output("verbmem_f", [0.65] * n)}},
        "retrain": {FULL: {"verbmem_f": _mean_output("verbmem_f", [0.1] * n)}},
    }
    a = analyse(outputs, Reference("retrain", None, "r"), min_gap=10, resamples=200, seed=1)
    assert a.recoveries[0].interval.value == pytest.approx(0.75)
    assert a.residuals[0].interval.value == pytest.approx(1 / 7)
    assert a.values["unlearned"]["q"]["verbmem_f"].value == pytest.approx(65.0)


def test_paired_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(0)
    o = rng.uniform(0.6, 1.0, 30)
    u = o * 0.2
    q = o * 0.9  # each item recovers (0.9-0.2)/(1-0.2) = 0.875 of its own drop -> tight paired interval
    outputs = {"original": {FULL: {"verbmem_f": _mean_output("verbmem_f", list(o))}},
               "unlearned": {FULL: {"verbmem_f": _mean_output("verbmem_f", list(u))},
                             "q": {"verbmem_f": _mean_output("verbmem_f", list(q))}}}
    a1 = analyse(outputs, Reference("default", 0.5, "d"), min_gap=1, resamples=300, seed=7)
    a2 = analyse(outputs, Reference("default", 0.5, "d"), min_gap=1, resamples=300, seed=7)
    r1, r2 = a1.recoveries[0].interval, a2.recoveries[0].interval
    assert (r1.value, r1.low, r1.high) == (r2.value, r2.low, r2.high)
    assert r1.value == pytest.approx(0.875)
    assert r1.high - r1.low < 1e-9  # paired: every resample gives the same ratio


def test_privleak_normalised_by_reference_auc():
    # forget scores all below holdout -> AUC 0 -> PrivLeak = (0 - 50) / 50 x 100 = -100
    items = [ItemScore(f"f{i}", 0.1, extra={"split": "forget"}) for i in range(5)] + \
            [ItemScore(f"h{i}", 3.0, extra={"split": "holdout"}) for i in range(5)]
    out = ProbeOutput("privleak", "auc", items)
    outputs = {"original": {FULL: {"privleak": out}}, "unlearned": {FULL: {"privleak": out}}}
    a = analyse(outputs, Reference("default", 0.5, "d"), min_gap=10, resamples=50)
    assert a.values["original"][FULL]["privleak_auc"].value == 0.0
    assert a.values["original"][FULL]["privleak"].value == pytest.approx(-100.0)


def test_three_items_are_inconclusive_not_a_certain_fail(world, tmp_path):
    """`--max-items 3` once gave `FAIL ... 100% [100%-100%]`: three items cannot decide."""
    from typer.testing import CliRunner

    from unlearn_audit.cli import app

    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--max-items", "3",
                                      "--cache-dir", str(world.hub_cache), "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code == 4, result.output
    assert "only 3 items (fewer than 20), too few to decide" in result.output
    import json

    record = json.loads((tmp_path / "report.json").read_text())
    assert {s["status"] for s in record["recoveries"] + record["net_recoveries"] + record["residuals"] if s["metric"] != "knowmem_r"} <= {
        "too-few-items", "not-judged"}


def _auc_output(forget: list[float], holdout: list[float]) -> ProbeOutput:
    items = [ItemScore(f"f{i}", s, extra={"split": "forget"}) for i, s in enumerate(forget)] + \
            [ItemScore(f"h{i}", s, extra={"split": "holdout"}) for i, s in enumerate(holdout)]
    return ProbeOutput("privleak", "auc", items)


N = 30
HOLDOUT = [float(i) for i in range(N)]
MEMORISED = [s - 100.0 for s in HOLDOUT]  # every forget score below every holdout score: AUC 0 (the original)
UNSEEN = list(HOLDOUT)                     # the same distribution: AUC 50 (the retrained model)
OVER = [s + 100.0 for s in HOLDOUT]        # every forget score above: AUC 100 (over-unlearned)


def _privleak_case(unlearned: list[float], thresholds: Thresholds):  # noqa: ANN202
    outputs = {"original": {FULL: {"privleak": _auc_output(MEMORISED, HOLDOUT)}},
               "unlearned": {FULL: {"privleak": _auc_output(unlearned, HOLDOUT)}},
               "retrain": {FULL: {"privleak": _auc_output(UNSEEN, HOLDOUT)}}}
    analysis = analyse(outputs, Reference("retrain", None, "r"), min_gap=10, resamples=300, seed=0)
    return analysis, decide(analysis, thresholds)


PRIVLEAK = Thresholds(judged=("privleak",))


@pytest.mark.parametrize("unlearned,decision,status,residual,muse", [
    (OVER, Decision.FAIL, "over-unlearned", -1.0, 100.0),     # MUSE: PrivLeak far above zero, a leak
    (MEMORISED, Decision.FAIL, "exceeds", 1.0, -100.0),        # under-unlearned: still marks its forget set
    (UNSEEN, Decision.PASS, "ok", 0.0, 0.0),                   # exactly the retrained model
])
def test_privleak_is_judged_both_ways(unlearned, decision, status, residual, muse):
    """Residual = (AUC_u - AUC_retrain) / (AUC_original - AUC_retrain), by hand: (100 - 50) / (0 - 50) = -1 for the
    over-unlearned model; MUSE's PrivLeak (AUC_u - AUC_retrain) / AUC_retrain x 100 = +100 for it."""
    analysis, verdict = _privleak_case(unlearned, PRIVLEAK)
    (share,) = analysis.residuals
    assert share.interval.value == pytest.approx(residual)
    assert analysis.values["unlearned"][FULL]["privleak"].value == pytest.approx(muse)
    assert share.status == status and verdict.decision is decision
    if status == "over-unlearned":
        assert "over-unlearned" in verdict.headline and "PrivLeak +100.0" in verdict.headline
        assert "threshold -50%" in verdict.headline


def test_over_unlearning_line_is_a_flag_and_reaching_across_it_is_named():
    analysis, verdict = _privleak_case(OVER, Thresholds(judged=("privleak",), max_over_unlearning=float("inf")))
    assert verdict.decision is Decision.PASS and analysis.residuals[0].status == "ok"  # one-sided, as before
    analysis, verdict = _privleak_case(OVER, Thresholds(judged=("privleak",), max_over_unlearning=5.0))
    assert analysis.residuals[0].interval.low > -5.0  # the retrained model's AUC resampled: about [-2, -0.6]
    assert verdict.decision is Decision.PASS  # within a line at -500% of the gap
    # half the forget items past every holdout item, half level with it: residual about -0.5, across a -50% line
    half = OVER[: N // 2] + UNSEEN[N // 2:]
    analysis, verdict = _privleak_case(half, PRIVLEAK)
    share = analysis.residuals[0]
    assert share.interval.low < -0.5 < share.interval.high
    assert share.status == "possibly-over-unlearned" and verdict.decision is Decision.PASS  # named, not undecided
    assert any("reaches past the over-unlearning line (-50%)" in r for r in verdict.reasons)
    with pytest.raises(Exception, match="max-over-unlearning"):
        Thresholds(max_over_unlearning=-0.1)


def _utility_case(unlearned: list[float], thresholds: Thresholds):  # noqa: ANN202
    original = [0.6 + 0.01 * i for i in range(N)]
    outputs = {"original": {FULL: {"verbmem_f": _mean_output("verbmem_f", [0.8] * N),
                                   "knowmem_r": _mean_output("knowmem_r", original)}},
               "unlearned": {FULL: {"verbmem_f": _mean_output("verbmem_f", [0.05] * N),
                                    "knowmem_r": _mean_output("knowmem_r", unlearned)}},
               "retrain": {FULL: {"verbmem_f": _mean_output("verbmem_f", [0.0] * N),
                                  "knowmem_r": _mean_output("knowmem_r", original)}}}
    analysis = analyse(outputs, Reference("retrain", None, "r"), min_gap=10, resamples=300, seed=0)
    return analysis, decide(analysis, thresholds)


def test_utility_drop_by_hand_reported_by_default_and_gated_on_request():
    """Drop = (U_original - U_unlearned) / U_original: the unlearned model keeps half of each item's score, so 0.5
    exactly, on every resample (paired)."""
    half = [(0.6 + 0.01 * i) / 2 for i in range(N)]
    analysis, verdict = _utility_case(half, Thresholds(judged=("verbmem_f",)))
    (drop,) = analysis.utility_drops
    assert drop.metric == "knowmem_r" and drop.variant is None
    assert (drop.interval.value, drop.interval.low, drop.interval.high) == pytest.approx((0.5, 0.5, 0.5))
    assert drop.status == "reported" and verdict.decision is Decision.PASS  # reported, not judged
    _, verdict = _utility_case(half, Thresholds(judged=("verbmem_f",), max_utility_drop=0.3))
    assert verdict.decision is Decision.FAIL
    assert verdict.headline.startswith("At full precision the unlearned model loses 50% [50%–50%] of the original's "
                                       "KnowMem on the retain set (threshold 30%)")
    analysis, verdict = _utility_case(half, Thresholds(judged=("verbmem_f",), max_utility_drop=0.6))
    assert verdict.decision is Decision.PASS and analysis.utility_drops[0].status == "ok"
    same = [0.6 + 0.01 * i for i in range(N)]  # kept everything: drop 0
    analysis, _ = _utility_case(same, Thresholds(judged=("verbmem_f",)))
    assert analysis.utility_drops[0].interval.value == pytest.approx(0.0)
