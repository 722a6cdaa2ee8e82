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
from .chain import Chained
from .icl import InContext
from .prune import MagnitudePrune
from .relearn import OPTIONS as RELEARN_OPTIONS
from .relearn import RelearnForget, RelearnUnrelated


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


def _relearn_builder(cls: type) -> Callable[[list[str]], Attack]:
    prefixes = {name: RELEARN_OPTIONS[name] for name in cls.options}
    shown = {"rank": "rRANK", "epochs": "eEPOCHS", "samples": "nSAMPLES", "lr": "lrRATE"}
    fix = "use full, " + ", ".join(shown[name] for name in prefixes)

    def build(options: list[str]) -> Attack:
        given: dict[str, float] = {}
        if "full" in options:  # full fine-tuning instead of LoRA
            given["full"] = True
            options = [o for o in options if o != "full"]
        for opt in options:  # the longest prefix first: lr before r
            name = next((n for n, p in sorted(prefixes.items(), key=lambda i: -len(i[1])) if opt.startswith(p)), None)
            try:
                given[name] = (float if name == "lr" else int)(opt[len(prefixes[name]):])
            except (KeyError, ValueError):
                example = ":".join(f"{p}{getattr(cls, n) if n != 'lr' else '2e-4'}" for n, p in prefixes.items())
                raise UsageError(f"unknown {cls.name} option '{opt}'", f"{fix}, e.g. {cls.name}:{example}") from None
        return cls(**given)

    return build


def _build_icl(options: list[str]) -> Attack:
    if len(options) > 1:
        raise UsageError(f"icl takes one number of examples, not {':'.join(options)}", "write it as icl:5")
    try:
        return InContext(int(options[0])) if options else InContext()
    except ValueError:
        raise UsageError(f"icl:{options[0]} is not a number of examples", "write it as icl:5") from None


ATTACKS: dict[str, AttackInfo] = {
    "relearn-forget": AttackInfo(
        name="relearn-forget",
        summary="LoRA fine-tuning (peft) on the forget set's training half (a seeded split by document, author or "
                "question), every run probing the other half; merged into the weights; the settings of "
                "relearn-unrelated (rRANK, eEPOCHS, lrRATE to change; full: full fine-tuning, lr 1e-5)",
        example="relearn-forget",
        source="Deeb & Roger, arXiv 2410.08827 (the split); Łucki et al., arXiv 2409.18025 (the fine-tuning)",
        build=_relearn_builder(RelearnForget),
        contract_variants=("relearn-forget:r8:e1",),
    ),
    "relearn-unrelated": AttackInfo(
        name="relearn-unrelated",
        summary="LoRA fine-tuning (peft) on 10 unrelated paragraphs of the shipped corpus, merged into the weights: "
                "rank 128, alpha 16, lr 2e-4, 3 epochs, batch 1 (rRANK, eEPOCHS, nSAMPLES, lrRATE to change; full: "
                "full fine-tuning of every linear layer instead, lr 1e-5)",
        example="relearn-unrelated",
        source="Łucki et al., arXiv 2409.18025 (their finetune.py's defaults)",
        build=_relearn_builder(RelearnUnrelated),
        contract_variants=("relearn-unrelated:r8:e1:n2", "relearn-unrelated:full:e1:n2:lr1e-3"),
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
    "icl": AttackInfo(
        name="icl",
        summary="K solved items of the forget set's training half before every probed item of the other half, in "
                "the benchmark's own prompt format; no weight changes",
        example="icl:5",
        source="Doshi & Stickland, arXiv 2411.12103",
        build=_build_icl,
        contract_variants=("icl:2",),
    ),
}

PRESETS = {"battery": tuple(info.example for info in ATTACKS.values())}
"""Named sets of attacks. ``battery``: every registered attack at its defaults."""


def is_attack_label(label: str) -> bool:
    """Whether a variant label (``prune:0.2``, ``relearn-unrelated:r64``, ``icl:5+rtn:4:g128``) names an attack of
    the battery (alone or followed by a quantizer)."""
    return label.split("+")[0].split(":")[0] in ATTACKS


def parse_attack(text: str) -> Attack:
    """Build the attack named by one ``--attack`` item (``ATTACK+QUANT``: the attack, then an in-memory quantizer)."""
    if "+" in text:
        from ..quantize import parse_variant

        head, _, tail = text.partition("+")
        return Chained(parse_attack(head), parse_variant(tail))
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


__all__ = ["ATTACKS", "PRESETS", "Attack", "AttackProof", "AttackResult", "Chained", "InContext", "MagnitudePrune",
           "RelearnForget", "RelearnUnrelated",
           "is_attack", "is_attack_label", "parse_attack", "parse_attacks"]
