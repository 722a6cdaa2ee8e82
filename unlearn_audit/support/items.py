"""Option lists such as ``--quant`` and ``--attack``: comma-separated items and named presets, expanded in order, each
item at most once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..errors import UsageError

T = TypeVar("T")


def parse_items(items: Iterable[str], presets: dict[str, tuple[str, ...]], build: Callable[[str], T],
                label: Callable[[T], Any], noun: str) -> list[T]:
    """Every item of ``items`` (each may be a comma-separated list or a preset name) built with ``build``, in order;
    an item given twice (after presets are expanded, compared by ``label``) is a usage error naming ``noun``."""
    built: list[T] = []
    for item in items:
        for piece in (p.strip() for p in item.split(",")):
            for name in presets.get(piece.lower(), (piece,) if piece else ()):
                built.append(build(name))
    labels = [label(b) for b in built]
    dupes = sorted({str(x) for x in labels if labels.count(x) > 1})
    if dupes:
        raise UsageError(f"{noun} {', '.join(dupes)} given twice", f"list each {noun} once")
    return built
