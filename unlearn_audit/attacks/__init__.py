"""The tamper battery: attacks beyond quantization, registered like the quantizers and run as variants of every model
(the unlearned one, the original, and the reference as the control), with the ``--attack`` syntax
``NAME[:SETTING...]`` (``prune:0.2``, ``relearn-unrelated:r64:e3``) and the preset ``battery`` (every registered
attack at its defaults). Opt-in: an audit runs none unless asked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError
from ..support.items import parse_items
from .base import Attack, AttackProof, AttackResult, is_attack
from .prune import MagnitudePrune
from .relearn import OPTIONS as RELEARN_OPTIONS
from .relearn import RelearnUnrelated


@dataclass(frozen=True)
class AttackInfo:
    """A registered attack: how to build it from an ``--attack`` item, where it comes from, what it costs."""

    name: str
    summary: str
    example: str
    source: str
    build: Callable[[list[str]], Attack]
    contract_variants: tuple[str, ...] = ()
    """Variants the contract tests run for this attack (every registered attack must list some)."""


def _build_prune(options: list[str]) -> Attack:
    if len(options) > 1:
        raise UsageError(f"prune takes one fraction, not {':'.join(options)}", "write it as prune:0.2")
    try:
        return MagnitudePrune(float(options[0])) if options else MagnitudePrune()
    except ValueError:
        raise UsageError(f"prune:{options[0]} is not a fraction", "write it as prune:0.2") from None


def _build_relearn_unrelated(options: list[str]) -> Attack:
    given: dict[str, float] = {}
    for opt in options:  # the longest prefix first: lr before r
        name = next((n for n, p in sorted(RELEARN_OPTIONS.items(), key=lambda i: -len(i[1])) if opt.startswith(p)),
                    None)
        try:
            given[name] = (float if name == "lr" else int)(opt[len(RELEARN_OPTIONS[name]):])
        except (KeyError, ValueError):
            raise UsageError(f"unknown relearn-unrelated option '{opt}'",
                             "use rRANK, eEPOCHS, nSAMPLES or lrRATE, e.g. relearn-unrelated:r64:e3:n10:lr2e-4") from None
    return RelearnUnrelated(**given)


ATTACKS: dict[str, AttackInfo] = {
    "relearn-unrelated": AttackInfo(
        name="relearn-unrelated",
        summary="LoRA fine-tuning (peft) on 10 unrelated paragraphs of the shipped corpus, merged into the weights: "
                "rank 128, alpha 16, lr 2e-4, 3 epochs, batch 1 (rRANK, eEPOCHS, nSAMPLES, lrRATE to change)",
        example="relearn-unrelated",
        source="Łucki et al., arXiv 2409.18025 (their finetune.py's defaults)",
        build=_build_relearn_unrelated,
        contract_variants=("relearn-unrelated:r8:e1:n2",),
    ),
    "prune": AttackInfo(
        name="prune",
        summary="unstructured magnitude pruning: the FRACTION smallest weights of every linear layer set to zero "
                "(lm_head, embeddings, norms excluded)",
        example="prune:0.2",
        source="Łucki et al., arXiv 2409.18025 (pruning as a cheap weight edit)",
        build=_build_prune,
        contract_variants=("prune:0.2", "prune:0.5"),
    ),
}

PRESETS = {"battery": tuple(info.example for info in ATTACKS.values())}
"""Named sets of attacks. ``battery``: every registered attack at its defaults."""


def is_attack_label(label: str) -> bool:
    """Whether a variant label (``prune:0.2``, ``relearn-unrelated:r64``) names an attack of the battery."""
    return label.split(":")[0] in ATTACKS


def parse_attack(text: str) -> Attack:
    """Build the attack named by one ``--attack`` item."""
    parts = [p.strip() for p in text.strip().lower().split(":") if p.strip()]
    if not parts:
        raise UsageError("empty --attack item", "give attacks like prune:0.2,relearn-unrelated")
    info = ATTACKS.get(parts[0])
    if info is None:
        raise UsageError(f"unknown attack '{parts[0]}' in '{text}'",
                         f"use one of: {', '.join(sorted(ATTACKS))} or battery (see `unlearn-audit attacks`)")
    return info.build(parts[1:])


def parse_attacks(items: list[str] | tuple[str, ...]) -> list[Attack]:
    """Parse every item (comma-separated lists and presets allowed); duplicates are an error."""
    return parse_items(items, PRESETS, parse_attack, lambda a: a.label, "attack")


__all__ = ["ATTACKS", "PRESETS", "Attack", "AttackProof", "AttackResult", "MagnitudePrune", "RelearnUnrelated",
           "is_attack", "is_attack_label", "parse_attack", "parse_attacks"]
