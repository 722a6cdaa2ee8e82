"""What every attack of the tamper battery is: a variant like a quantizer (a label, its settings, applied to a loaded
model in place and undone from disk afterwards), run on every model of the audit (the unlearned one, the original
and the reference, which is the control), and the proof of what it did."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from torch import nn


@dataclass(frozen=True)
class AttackProof:
    """What an attack did to one model, recorded beside its figures.

    Attributes:
        attack: the attack's name (``prune``, ``relearn-unrelated``).
        seed: the seed it ran with (``None`` for a deterministic edit).
        seconds: wall time of the attack itself (not the probes).
        layers_changed: linear layers whose weights it changed.
        steps: optimiser steps (0 for a weight edit).
        samples: training texts, and their SHA-256 (in order).
        trainable_parameters: parameters it trained (the adapter's, for LoRA).
        tokens: training tokens seen over all steps.
        zero_share: for pruning, the share of zeros in each changed layer (layer -> share).
        libraries: the versions of the libraries it ran on.
        then: for an attack followed by a quantizer (``ATTACK+QUANT``), the quantizer's label and proof.
    """

    attack: str
    seed: int | None
    seconds: float
    layers_changed: int
    steps: int = 0
    samples: int = 0
    samples_sha256: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    tokens: int = 0
    zero_share: dict[str, float] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    then: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackResult:
    """What applying an attack produced: its settings and its proof (the shape the audit's runs record)."""

    label: str
    settings: dict[str, Any]
    proof: AttackProof


class Attack(Protocol):
    """One attack at fixed settings. ``attack`` changes ``model`` in place (the audit restores the checkpoint's
    weights afterwards, or passes a copy) and must be deterministic for a given ``seed``."""

    label: str
    stage: str
    """Always ``weights``: applied to a loaded full-precision copy, as the in-place quantizers are."""
    fixed_grid: bool
    """Always False: the weight-level diagnostic compares quantization grids, not attacks."""

    def require(self) -> None: ...

    def settings(self) -> dict[str, Any]:
        """Every setting its result depends on (the result cache's key includes them)."""
        ...

    def attack(self, model: nn.Module, tokenizer: Any, seed: int) -> AttackResult: ...


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_attack(variant: Any) -> bool:
    """Whether a variant is an attack of the battery (not a quantizer)."""
    return callable(getattr(variant, "attack", None))
