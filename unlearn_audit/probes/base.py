"""What a probe returns: per-item scores (the record keeps them all) and how to summarise them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ItemScore:
    """One probed item.

    Attributes:
        item_id: stable id within its split (``verbmem/forget/17``).
        score: the item's score (ROUGE-L F1 in [0, 1] for generation probes; the Min-K% score for PrivLeak).
        prompt: what the model was asked (the question, for KnowMem; the ICL prefix is not repeated).
        reference: the expected text.
        generation: what the model produced.
        extra: other per-item figures (ROUGE-L recall, token count, split...).
    """

    item_id: str
    score: float
    prompt: str | None = None
    reference: str | None = None
    generation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        extra = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in self.extra.items()}
        return {"id": self.item_id, "score": None if not np.isfinite(self.score) else self.score,
                "prompt": self.prompt, "reference": self.reference, "generation": self.generation, **extra}


@dataclass
class ProbeOutput:
    """Everything one probe produced for one model variant.

    ``kind`` says how items combine into the headline: ``mean`` (mean score x 100) or ``auc``
    (AUC x 100 of forget-split items against holdout-split items).
    """

    metric: str
    kind: str
    items: list[ItemScore]
    details: dict[str, Any] = field(default_factory=dict)

    def scores(self, split: str | None = None, key: str = "score") -> np.ndarray:
        """Item scores (or another per-item figure from ``extra``), optionally of one split."""
        chosen = self.items if split is None else [i for i in self.items if i.extra.get("split") == split]
        return np.array([i.score if key == "score" else i.extra[key] for i in chosen], dtype=np.float64)
