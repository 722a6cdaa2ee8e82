"""Per-item scores the probes compute: ROUGE-L, Min-K% and Min-K%++, zlib (the statistics over items, AUC and
bootstrap intervals, are in :mod:`unlearn_audit.analysis.statistics`).

Definitions follow MUSE's reference code (see docs/METRICS in the design notes):

* ROUGE-L from ``rouge_score.RougeScorer(["rougeL"], use_stemmer=False)``, called as
  ``score(reference, generation)``;
* Min-K%: ``-mean(lowest int(n * k) token log-probs)``;
* AUC between forget (label 0) and holdout (label 1) texts computed as ``roc_curve(y, -score)`` does,
  i.e. AUC = P(a holdout text looks more likely than a forget text), ties counted one half.
"""

from __future__ import annotations

from collections.abc import Sequence
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
