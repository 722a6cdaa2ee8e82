"""Quantizers behind one interface, and the ``--quant`` variant syntax.

Variant syntax: ``METHOD:BITS[:OPTION...]``, e.g. ``rtn:4`` (group 128, asymmetric),
``rtn:3:g64``, ``rtn:4:g128:sym``, ``rtn:8:head`` (also quantize ``lm_head``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError
from .base import QuantProof, QuantResult, Quantizer
from .rtn import RTNQuantizer


@dataclass(frozen=True)
class MethodInfo:
    """A registered quantization method: how to build it from a variant string, and what it needs."""

    name: str
    summary: str
    example: str
    needs: str
    build: Callable[[int, list[str]], Quantizer]


def _build_rtn(bits: int, options: list[str]) -> Quantizer:
    group, symmetric, head = 128, False, False
    for opt in options:
        if opt.startswith("g") and opt[1:].isdigit():
            group = int(opt[1:])
        elif opt == "sym":
            symmetric = True
        elif opt == "asym":
            symmetric = False
        elif opt == "head":
            head = True
        else:
            raise UsageError(f"unknown RTN option '{opt}'", "use gN (group size), sym, asym or head, e.g. rtn:4:g128")
    return RTNQuantizer(bits=bits, group_size=group, symmetric=symmetric, include_lm_head=head)


METHODS: dict[str, MethodInfo] = {
    "rtn": MethodInfo(
        name="rtn",
        summary="round-to-nearest per group of input columns, 2-8 bits, asymmetric (default) or symmetric",
        example="rtn:4:g128",
        needs="nothing beyond torch; runs on CPU",
        build=_build_rtn,
    ),
}


def parse_variant(text: str) -> Quantizer:
    """Build the quantizer named by one ``--quant`` item."""
    parts = [p.strip() for p in text.strip().lower().split(":") if p.strip()]
    if not parts:
        raise UsageError("empty --quant item", "give variants like rtn:8,rtn:4")
    method = METHODS.get(parts[0])
    if method is None:
        raise UsageError(f"unknown quantization method '{parts[0]}' in '{text}'",
                         f"use one of: {', '.join(sorted(METHODS))} (see `unlearn-audit quantizers`)")
    if len(parts) < 2 or not parts[1].isdigit():
        raise UsageError(f"'{text}' names no bit width", f"write it as {method.example}")
    return method.build(int(parts[1]), parts[2:])


def parse_variants(items: list[str] | tuple[str, ...]) -> list[Quantizer]:
    """Parse every item (comma-separated lists allowed); duplicates are an error."""
    quantizers: list[Quantizer] = []
    for item in items:
        for piece in item.split(","):
            if piece.strip():
                quantizers.append(parse_variant(piece))
    labels = [q.label for q in quantizers]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise UsageError(f"variant {', '.join(dupes)} given twice", "list each variant once")
    return quantizers


__all__ = ["METHODS", "QuantProof", "QuantResult", "Quantizer", "RTNQuantizer", "parse_variant", "parse_variants"]
