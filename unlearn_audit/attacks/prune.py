"""Magnitude pruning (Łucki et al., arXiv 2409.18025, beside fine-tuning; a cheap weight edit like quantization):
in every linear layer quantization takes (``lm_head`` left alone; embeddings and norms are not linear) the given
fraction of weights with the smallest absolute values set to zero, layer by layer (unstructured)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..inputs.models import quantizable_linears
from .base import AttackProof, AttackResult


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """name -> layer of the linear layers an attack changes: those the quantizers take (not ``lm_head``)."""
    return dict(quantizable_linears(model, include_lm_head=False)[0])


def prune_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """True where a weight is kept: all but the ``round(fraction * n)`` weights of smallest magnitude (ties broken by
    position, so exactly that many are pruned)."""
    n = weight.numel()
    pruned = int(round(fraction * n))
    keep = torch.ones(n, dtype=torch.bool, device=weight.device)
    if pruned:
        order = torch.argsort(weight.detach().abs().flatten().float(), stable=True)
        keep[order[:pruned]] = False
    return keep.view_as(weight)


@dataclass(frozen=True)
class MagnitudePrune:
    """``prune:FRACTION``: unstructured magnitude pruning of every linear layer at ``fraction``."""

    fraction: float = 0.2
    stage = "weights"
    fixed_grid = False

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise UsageError(f"prune:{self.fraction} prunes no weight or every weight", "give a fraction in (0, 1), "
                             "e.g. prune:0.2")

    @property
    def label(self) -> str:
        return f"prune:{self.fraction:g}"

    def require(self) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {"method": "magnitude pruning", "fraction": self.fraction, "scope": "per linear layer, unstructured",
                "excluded": "lm_head, embeddings, norms"}

    def attack(self, model: nn.Module, tokenizer: Any, seed: int) -> AttackResult:
        started = time.time()
        shares = {}
        with torch.no_grad():
            for name, layer in linear_layers(model).items():
                layer.weight.mul_(prune_mask(layer.weight, self.fraction).to(layer.weight.dtype))
                shares[name] = float((layer.weight == 0).float().mean())
        proof = AttackProof(attack="prune", seed=None, seconds=round(time.time() - started, 3),
                            layers_changed=len(shares), zero_share=shares, libraries={"torch": torch.__version__})
        return AttackResult(label=self.label, settings=self.settings(), proof=proof)
