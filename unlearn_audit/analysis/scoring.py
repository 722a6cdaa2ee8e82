"""Metric arithmetic: ROUGE-L, Min-K% scores, AUC, and paired bootstrap intervals.

Definitions follow MUSE's reference code (see docs/METRICS in the design notes):

* ROUGE-L from ``rouge_score.RougeScorer(["rougeL"], use_stemmer=False)``, called as
  ``score(reference, generation)``;
* Min-K%: ``-mean(lowest int(n * k) token log-probs)``;
* AUC between forget (label 0) and holdout (label 1) texts computed as ``roc_curve(y, -score)`` does,
  i.e. AUC = P(a holdout text looks more likely than a forget text), ties counted one half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class RougeL:
    """ROUGE-L of one generation against one reference."""

    f1: float
    recall: float
    precision: float


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):  # noqa: ANN202 - rouge_score has no type hints
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(reference: str, generation: str, *, use_stemmer: bool = False) -> RougeL:
    """ROUGE-L (longest common subsequence) between ``reference`` and ``generation``."""
    s = _scorer(use_stemmer).score(reference, generation)["rougeL"]
    return RougeL(f1=float(s.fmeasure), recall=float(s.recall), precision=float(s.precision))


def min_k_score(token_logprobs: Sequence[float] | np.ndarray, k: float = 0.4, *,
                at_least_one: bool = False) -> float:
    """Min-K% membership score: minus the mean of the lowest ``int(n*k)`` token log-probabilities.

    Higher means *less* likely (less memorised). MUSE uses ``int(n*k)`` (an empty selection gives NaN);
    open-unlearning uses ``max(1, int(n*k))`` (``at_least_one=True``).
    """
    return -_lowest_mean(np.asarray(token_logprobs, dtype=np.float64), k, at_least_one)


def _lowest_mean(values: np.ndarray, k: float, at_least_one: bool) -> float:
    count = int(len(values) * k)
    if at_least_one:
        count = max(1, count)
    if count == 0:
        return float("nan")
    return float(np.sort(values)[:count].mean())


def min_k_plus_plus_score(logprobs: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float = 0.4, *,
                          at_least_one: bool = False) -> float:
    """Min-K%++ (Zhang et al. 2024, arXiv 2404.02936), as a non-membership score (higher = less likely).

    Per position, z = (log p(x_t) - mu_t) / sigma_t with mu_t, sigma_t the mean and standard deviation of
    log p over the vocabulary; the score is minus the mean of the lowest ``int(n*k)`` z values.
    """
    z = (np.asarray(logprobs) - np.asarray(mu)) / np.asarray(sigma)
    return -_lowest_mean(z, k, at_least_one)


def zlib_score(logprobs: np.ndarray, text: str) -> float:
    """Loss over zlib entropy (Carlini et al. 2021): mean token NLL / len(zlib.compress(text)) bytes.

    Higher = less likely a member (the reference code's ``ll / zlib`` with the sign flipped).
    """
    import zlib

    if len(logprobs) == 0:
        return float("nan")
    return float(-np.mean(logprobs) / len(zlib.compress(text.encode("utf-8"))))


def tpr_at_fpr(forget: np.ndarray, holdout: np.ndarray, fpr: float) -> float:
    """True-positive rate of detecting forget texts as members at a false-positive rate <= ``fpr`` on
    holdout texts (membership = a low score), the best point of the ROC curve within that FPR."""
    return float(batched_tpr_at_fpr(np.asarray(forget)[None, :], np.asarray(holdout)[None, :], fpr)[0])


def batched_tpr_at_fpr(forget: np.ndarray, holdout: np.ndarray, fpr: float) -> np.ndarray:
    """``tpr_at_fpr`` for each row of ``forget`` [B, nf] against the same row of ``holdout`` [B, nh]."""
    allowed = int(np.floor(fpr * holdout.shape[1] + 1e-9))  # false positives we may accept
    ordered = np.sort(holdout, axis=1)  # ascending: the most member-like holdout texts first
    if allowed >= holdout.shape[1]:
        return np.ones(forget.shape[0])
    cut = ordered[:, allowed][:, None]  # flag only texts scoring strictly below the (allowed+1)-th lowest
    return (forget < cut).mean(axis=1)


def auc_forget_vs_holdout(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """AUC of ``roc_curve(y, -score)`` with forget = 0 and holdout = 1 (Mann-Whitney form).

    Equals P(score_holdout < score_forget) + 0.5 * P(equal): near 0 when the forget texts are
    memorised (they look far more likely than unseen holdout texts), about 0.5 for a model that
    never saw them.
    """
    return float(batched_auc(np.asarray(forget_scores)[None, :], np.asarray(holdout_scores)[None, :])[0])


def batched_auc(forget: np.ndarray, holdout: np.ndarray) -> np.ndarray:
    """AUC for each row of ``forget`` [B, nf] against the same row of ``holdout`` [B, nh]."""
    f = forget[:, :, None]
    h = holdout[:, None, :]
    wins = (h < f).mean(axis=(1, 2)) + 0.5 * (h == f).mean(axis=(1, 2))
    return wins


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval (95% unless stated)."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "low": _finite(self.low), "high": _finite(self.high)}


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def bootstrap_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, n] item indices drawn with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def percentile_interval(point: float, samples: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile interval of finite bootstrap ``samples`` around ``point``."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0 or not np.isfinite(point):
        return Interval(point, float("nan"), float("nan"))
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return Interval(float(point), float(low), float(high))


Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps per-item data resampled as [B, n] (or [1, n] for the point) to B values."""


def share(numerator: np.ndarray, denominator: np.ndarray, min_denominator: float) -> np.ndarray:
    """numerator / denominator, NaN where |denominator| < min_denominator (the share is undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    return np.where(np.abs(denominator) < min_denominator, np.nan, out)
