"""Statistics over items, as MUSE's reference code and the analysis compute them: the forget-vs-holdout AUC
(``roc_curve(y, -score)``: the chance a holdout text looks more likely than a forget text, ties counted one half),
TPR at a low FPR, and paired bootstrap percentile intervals of shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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
