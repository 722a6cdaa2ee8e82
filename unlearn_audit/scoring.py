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
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    count = int(len(lp) * k)
    if at_least_one:
        count = max(1, count)
    if count == 0:
        return float("nan")
    return float(-lp[:count].mean())


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
