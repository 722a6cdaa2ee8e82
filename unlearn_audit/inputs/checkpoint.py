"""Reading a checkpoint's safetensors files without loading the model: which file holds each tensor, the shapes
from the headers alone, one tensor at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .hub import indexed_shards

NOT_QUANTIZED = ("lm_head", "embed", "wte", "wpe", "norm", "ln_")
"""Tensor names (substrings) that are not linear layers a quantizer takes: the output layer, embeddings, norms."""


def tensor_index(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the files' headers only."""
    from safetensors import safe_open

    shards = indexed_shards(folder)  # a sharded checkpoint: the index's files, not a stale file beside them
    files = sorted(folder.glob("*.safetensors")) if shards is None else [folder / name for name in shards]
    if not files:
        raise InputError(f"{folder} has no safetensors weights", "the diagnostic reads safetensors only")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{folder}'s safetensors index names missing shards ({', '.join(missing[:3])})",
                         "download the whole checkpoint again (or fix model.safetensors.index.json)")
    index = {}
    for f in files:
        with _opened(f) as handle:
            for name in handle.keys():
                index[name] = f
    return index


@contextmanager
def _opened(file: Path) -> Iterator[Any]:
    """``safe_open`` of one file, its header parse failures (a truncated or hostile file) as bad input."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{file.name} is not a readable safetensors file ({detail})",
                         "download the checkpoint again") from None


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in ``folder``'s safetensors, from the headers only (one open per file); raises
    :class:`InputError` when there is no safetensors file."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(set(tensor_index(folder).values())):
        with _opened(file) as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def linear_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The linear weight matrices among ``shapes`` (lm_head, embeddings and norms excluded)."""
    return {name: shape for name, shape in shapes.items()
            if name.endswith(".weight") and not any(s in name for s in NOT_QUANTIZED) and len(shape) == 2}


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    """Parameters in ``shapes``."""
    return sum(math.prod(shape) for shape in shapes.values())


def load_tensor(path: Path, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One tensor from a safetensors file, as float32 (its values rounded to ``dtype`` first, if given)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        t = handle.get_tensor(name)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.float()
