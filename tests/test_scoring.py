"""Metric arithmetic against values worked out by hand, and against independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_audit.analysis.statistics import Interval, auc_forget_vs_holdout, batched_auc, percentile_interval, share
from unlearn_audit.probes.scoring import min_k_score, rouge_l


def test_rouge_l_by_hand():
    # reference: the cat sat on the mat (6 tokens); generation: the cat lay on the mat (6 tokens)
    # LCS = "the cat on the mat" = 5 -> precision 5/6, recall 5/6, F1 5/6
    r = rouge_l("the cat sat on the mat", "the cat lay on the mat")
    assert r.precision == pytest.approx(5 / 6)
    assert r.recall == pytest.approx(5 / 6)
    assert r.f1 == pytest.approx(5 / 6)


def test_rouge_l_unequal_lengths_by_hand():
    # reference: a b c d (4); generation: x a c (3); LCS = "a c" = 2 -> P 2/3, R 2/4, F1 = 2PR/(P+R) = 4/7
    r = rouge_l("a b c d", "x a c")
    assert r.precision == pytest.approx(2 / 3)
    assert r.recall == pytest.approx(1 / 2)
    assert r.f1 == pytest.approx(4 / 7)


def test_rouge_l_tokenisation_is_case_and_punctuation_blind_and_unstemmed():
    # rouge_score lowercases and drops punctuation; without the stemmer "cats" != "cat"
    assert rouge_l("The cat, sat!", "the cat sat").f1 == pytest.approx(1.0)
    assert rouge_l("cats", "cat").f1 == 0.0
    assert rouge_l("cats", "cat", use_stemmer=True).f1 == pytest.approx(1.0)
    assert rouge_l("anything", "").f1 == 0.0


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_matches_an_independent_lcs():
    rng = np.random.default_rng(3)
    words = "alpha beta gamma delta eps zeta".split()
    for _ in range(25):
        ref = list(rng.choice(words, size=rng.integers(1, 12)))
        gen = list(rng.choice(words, size=rng.integers(1, 12)))
        lcs = _lcs(ref, gen)
        p, r = lcs / len(gen), lcs / len(ref)
        f = 0.0 if lcs == 0 else 2 * p * r / (p + r)
        assert rouge_l(" ".join(ref), " ".join(gen)).f1 == pytest.approx(f)


def test_min_k_by_hand():
    # n = 5, k = 0.4 -> int(2) lowest: -5, -4 -> mean -4.5 -> score 4.5
    assert min_k_score([-1, -2, -3, -4, -5], 0.4) == pytest.approx(4.5)
    # n = 10, k = 0.25 -> int(2.5) = 2 lowest
    lp = [-0.1] * 8 + [-7.0, -9.0]
    assert min_k_score(lp, 0.25) == pytest.approx(8.0)


def test_min_k_empty_selection_follows_muse_or_open_unlearning():
    # n = 2, k = 0.4 -> int(0.8) = 0: MUSE's mean of nothing is NaN; open-unlearning takes max(1, .)
    assert math.isnan(min_k_score([-1.0, -3.0], 0.4))
    assert min_k_score([-1.0, -3.0], 0.4, at_least_one=True) == pytest.approx(3.0)


def test_auc_by_hand():
    # forget scores [3, 1], holdout [2, 4]; AUC = P(holdout < forget) = pairs (2<3) only -> 1/4
    assert auc_forget_vs_holdout(np.array([3.0, 1.0]), np.array([2.0, 4.0])) == pytest.approx(0.25)
    # ties count one half: forget [2], holdout [2] -> 0.5
    assert auc_forget_vs_holdout(np.array([2.0]), np.array([2.0])) == pytest.approx(0.5)
    # memorised forget set (low Min-K% score = likely text) -> AUC 0
    assert auc_forget_vs_holdout(np.array([0.1, 0.2]), np.array([3.0, 4.0])) == 0.0


def test_auc_matches_sklearn_roc_curve_as_muse_calls_it():
    from sklearn.metrics import auc, roc_curve

    rng = np.random.default_rng(0)
    for _ in range(10):
        forget = np.round(rng.normal(2, 1, 37), 1)  # rounding makes ties
        holdout = np.round(rng.normal(2.5, 1, 41), 1)
        y = np.r_[np.zeros(len(forget)), np.ones(len(holdout))]
        fpr, tpr, _ = roc_curve(y, -np.r_[forget, holdout])
        assert auc_forget_vs_holdout(forget, holdout) == pytest.approx(auc(fpr, tpr))


def test_batched_auc_rows_are_independent():
    f = np.array([[3.0, 1.0], [0.0, 0.0]])
    h = np.array([[2.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(batched_auc(f, h), [0.25, 0.0])


def test_percentile_interval_and_undefined_share():
    samples = np.arange(1001, dtype=float)
    i = percentile_interval(500.0, samples)
    assert i.low == pytest.approx(25.0) and i.high == pytest.approx(975.0)
    assert share(np.array([1.0, 1.0]), np.array([2.0, 0.01]), 0.1)[0] == 0.5
    assert math.isnan(share(np.array([1.0]), np.array([0.01]), 0.1)[0])
    assert Interval(float("nan"), 1.0, 2.0).as_dict()["value"] is None


def test_min_k_plus_plus_by_hand():
    # position 1: p = (.5, .5), token 0 -> mu = ln .5, sigma clamped to 1e-3 -> z = 0
    # position 2: p = (.9, .1), token 1 -> z = (ln .1 - mu) / sigma = -sqrt(.9/.1) = -3 (Bernoulli)
    from unlearn_audit.probes.scoring import min_k_plus_plus_score

    lp = np.log([0.5, 0.1])
    mu = np.array([np.log(0.5), 0.9 * np.log(0.9) + 0.1 * np.log(0.1)])
    sigma = np.array([1e-3, np.sqrt(0.9 * np.log(0.9) ** 2 + 0.1 * np.log(0.1) ** 2 - mu[1] ** 2)])
    # k = 0.5 of n = 2 -> the single lowest z = -3 -> score 3
    assert min_k_plus_plus_score(lp, mu, sigma, 0.5) == pytest.approx(3.0)
    # k = 1: mean of (0, -3) = -1.5 -> 1.5
    assert min_k_plus_plus_score(lp, mu, sigma, 1.0) == pytest.approx(1.5)


def test_engine_computes_min_k_plus_plus_statistics_from_logits():
    """The engine's mu and sigma on a stub model whose next-token distributions are known."""
    from types import SimpleNamespace

    import torch

    from unlearn_audit.probes.scoring import min_k_plus_plus_score
    from unlearn_audit.engines.hf import HFEngine as Engine

    class Stub(torch.nn.Module):
        config = SimpleNamespace(max_position_embeddings=16)

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):  # noqa: ARG002
            dists = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]]))
            return SimpleNamespace(logits=dists.unsqueeze(0).expand(input_ids.shape[0], -1, -1))

    class Tok:
        pad_token_id = 0
        eos_token_id = 0

        def __call__(self, texts):
            return {"input_ids": [[0, 0, 1] for _ in texts]}

    (stats,) = Engine(Stub(), Tok()).token_stats(["x"])
    np.testing.assert_allclose(stats.logprobs, np.log([0.5, 0.1]), rtol=1e-6)
    assert min_k_plus_plus_score(stats.logprobs, stats.mu, stats.sigma, 0.5) == pytest.approx(3.0, rel=1e-5)


def test_zlib_score_by_hand():
    import zlib

    from unlearn_audit.probes.scoring import zlib_score

    text = "the same words the same words"
    assert zlib_score(np.array([-1.0, -3.0]), text) == pytest.approx(2.0 / len(zlib.compress(text.encode())))


def test_tpr_at_low_fpr_matches_the_roc_curve():
    from sklearn.metrics import roc_curve

    from unlearn_audit.analysis.statistics import tpr_at_fpr

    # by hand: one false positive allowed of 4 holdout texts -> flag scores below 2 -> 2 of 3 forget texts
    assert tpr_at_fpr(np.array([0.1, 0.2, 5.0]), np.array([1.0, 2.0, 3.0, 4.0]), 0.25) == pytest.approx(2 / 3)
    rng = np.random.default_rng(5)
    for _ in range(20):
        forget = np.round(rng.normal(1.5, 1, 40), 1)
        holdout = np.round(rng.normal(2.5, 1, 60), 1)
        y = np.r_[np.ones(40), np.zeros(60)]  # members = forget; membership score = -score
        # every threshold (the default drops collinear points, which can hide the best one within the FPR)
        fpr, tpr, _ = roc_curve(y, -np.r_[forget, holdout], drop_intermediate=False)
        for alpha in (0.01, 0.05, 0.2):
            assert tpr_at_fpr(forget, holdout, alpha) == pytest.approx(tpr[fpr <= alpha + 1e-12].max())


def test_flavours_choose_the_reference_details():
    from unlearn_audit.config import ProbeSettings
    from unlearn_audit.errors import UsageError

    assert (ProbeSettings().rouge_stemmer, ProbeSettings().mink_at_least_one) == (False, False)
    ou = ProbeSettings(flavour="open-unlearning")
    assert (ou.rouge_stemmer, ou.mink_at_least_one) == (True, True)
    with pytest.raises(UsageError, match="flavour"):
        ProbeSettings(flavour="tofu")
    with pytest.raises(UsageError, match="temperature"):
        ProbeSettings(sample_temperature=0)
