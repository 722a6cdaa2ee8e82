"""An attack followed by a quantizer (``relearn-unrelated+rtn:4``): the model as a user would deploy it after the
attack (fine-tuned, then quantized), run like any other variant. The quantizer must work on the model in memory
(RTN); the others quantize while loading or from a folder, and are refused with the list of those that chain."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..errors import UsageError
from ..inputs.data import ForgetData
from ..inputs.split import ForgetSplit
from .base import Attack, AttackResult


@dataclass(frozen=True)
class Chained:
    """``ATTACK+QUANT``: ``first`` applied, then ``then`` quantizes the attacked weights in place."""

    first: Attack
    then: Any
    stage = "weights"
    fixed_grid = False

    def __post_init__(self) -> None:
        if self.then.stage != "weights" or getattr(self.then, "writes_scratch", False) \
                or not callable(getattr(self.then, "apply", None)):
            raise UsageError(f"{self.label}: {self.then.label} cannot follow an attack (it quantizes while loading, "
                             "from a folder or through files)", "chain an in-memory quantizer: ATTACK+rtn:4 or "
                             "ATTACK+rtn:8, and test the others on their own (--quant)")

    @property
    def label(self) -> str:
        return f"{self.first.label}+{self.then.label}"

    @property
    def needs_split(self) -> bool:
        return bool(getattr(self.first, "needs_split", False))

    def bind(self, split: ForgetSplit) -> Chained:
        return replace(self, first=self.first.bind(split))

    def probe_data(self) -> ForgetData | None:
        """The prompts the first attack probes with (``icl``), else None (the audit's own)."""
        probe_data = getattr(self.first, "probe_data", None)
        return probe_data() if probe_data is not None else None

    def require(self) -> None:
        self.first.require()
        self.then.require()

    def settings(self) -> dict[str, Any]:
        return {"attack": self.first.settings(), "then": self.then.settings()}

    def attack(self, model: nn.Module, tokenizer: Any, seed: int) -> AttackResult:
        first = self.first.attack(model, tokenizer, seed)
        quantized = self.then.apply(model)
        proof = replace(first.proof, then={"label": self.then.label, **quantized.proof.as_dict()})
        return AttackResult(label=self.label, settings={"attack": first.settings, "then": quantized.settings},
                            proof=proof)
