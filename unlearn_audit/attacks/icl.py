"""In-context relearning (Doshi & Stickland, arXiv 2411.12103, "Does Unlearning Truly Unlearn? A Black Box Evaluation
of LLM Unlearning Methods": few-shot prompts bring back much of what unlearning removed): ``k`` solved items of the
forget set's training half placed before every probed item of the other half, in the benchmark's own prompt format
(:func:`unlearn_audit.inputs.split.with_shots`). No weight changes; the same examples for every model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ..errors import RuntimeFailure, UsageError
from ..inputs.data import ForgetData
from ..inputs.split import ForgetSplit, with_shots
from .base import AttackProof, AttackResult, sha256


@dataclass(frozen=True)
class InContext:
    """``icl:K``: ``k`` solved training-half items before each probed item (default 5)."""

    k: int = 5
    shots: tuple[str, ...] = field(default=(), compare=False, repr=False)
    prompted: ForgetData | None = field(default=None, compare=False, repr=False)
    """The probed half with the examples in place (bound by the audit)."""
    stage = "weights"
    fixed_grid = False
    needs_split = True
    changes_weights = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UsageError(f"icl:{self.k} shows no example", "give icl:K with K >= 1, e.g. icl:5")

    @property
    def label(self) -> str:
        return f"icl:{self.k}"

    def require(self) -> None:
        pass

    def bind(self, split: ForgetSplit) -> InContext:
        """This attack on the audit's split: the probed half with ``k`` training-half items before each item."""
        data, shots = with_shots(split, self.k)
        return replace(self, shots=tuple(shots), prompted=data)

    def probe_data(self) -> ForgetData:
        """The probed half with the examples in place: what every run under this attack probes."""
        if self.prompted is None:
            raise RuntimeFailure(f"{self.label} was not given the forget set's split",
                                 "run it through an audit (unlearn-audit check ... --attack icl:5)")
        return self.prompted

    def settings(self) -> dict[str, Any]:
        return {"method": "in-context examples from the forget set's training half", "k": self.k,
                "examples": len(self.shots),
                "source": "Doshi & Stickland, arXiv 2411.12103", "format": "the benchmark's own prompt",
                "samples_sha256": [sha256(t) for t in self.shots]}

    def attack(self, model: nn.Module, tokenizer: Any, seed: int) -> AttackResult:
        proof = AttackProof(attack="icl", seed=None, seconds=0.0, layers_changed=0, samples=len(self.shots),
                            samples_sha256=[sha256(t) for t in self.shots])
        return AttackResult(label=self.label, settings=self.settings(), proof=proof)
