"""Weight-level diagnostic: does quantization map the unlearned weights back onto the original's?

Without any data: for each quantizer with a fixed grid, and each linear weight matrix (``lm_head``,
embeddings and norms excluded), the share of weights whose quantized value in the unlearned model equals
the one in the original, and ``||Q(u) - Q(o)|| / ||u - o||`` (near 0: quantization erases the
unlearning update; near 1: it keeps it). A high share predicts recovery before a single probe runs.

Tensors are read one pair at a time from safetensors (``safe_open``), so memory stays at two tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .quantize import Quantizer

_SKIP = ("lm_head", "embed", "wte", "wpe", "norm", "ln_")


def tensor_index(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the files' headers only."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} has no safetensors weights", "the diagnostic reads safetensors only")
    index = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                index[name] = f
    return index


def load_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name).float()


@dataclass
class LayerDiff:
    """One weight matrix under one quantizer."""

    name: str
    numel: int
    moved: float
    """Share of weights that unlearning changed at all."""
    same_code: float
    """Share of weights with Q(u) == Q(o)."""
    same_code_of_moved: float | None
    """Among weights unlearning changed, the share quantization maps back onto the original's value."""
    norm_ratio: float | None
    """||Q(u) - Q(o)|| / ||u - o||."""


@dataclass
class WeightDiff:
    """The diagnostic for one pair of models and several quantizers."""

    unlearned: str
    original: str
    quantizers: list[str]
    overall: dict[str, dict[str, float | None]] = field(default_factory=dict)
    layers: dict[str, list[LayerDiff]] = field(default_factory=dict)
    not_compared: dict[str, str] = field(default_factory=dict)
    """Variants left out, with the reason (calibrated methods: their grid depends on data)."""

    def as_dict(self) -> dict[str, Any]:
        return {"unlearned": self.unlearned, "original": self.original, "quantizers": self.quantizers,
                "not_compared": self.not_compared, "overall": self.overall,
                "layers": {q: [vars(layer) for layer in rows] for q, rows in self.layers.items()}}


def weight_diff(unlearned: Path, original: Path, quantizers: list[Quantizer], *, labels: tuple[str, str] = ("", ""),
                advance=None) -> WeightDiff:  # noqa: ANN001
    """Compare two checkpoints' linear weights under each fixed-grid quantizer."""
    usable = [q for q in quantizers if q.fixed_grid]
    u_index, o_index = tensor_index(unlearned), tensor_index(original)
    names = [n for n in u_index if n.endswith(".weight") and not any(s in n for s in _SKIP)]
    missing = [n for n in names if n not in o_index]
    if missing:
        raise InputError(f"the original lacks weight {missing[0]} (and {len(missing) - 1} more)",
                         "compare a checkpoint with the model it was unlearned from")
    result = WeightDiff(labels[0] or str(unlearned), labels[1] or str(original), [q.label for q in usable],
                        not_compared={q.label: "its grid depends on calibration data, so it cannot be compared "
                                      "without running it; see its probe results" for q in quantizers
                                      if not q.fixed_grid})
    totals = {q.label: {"numel": 0, "moved": 0, "same": 0, "same_moved": 0, "num": 0.0, "den": 0.0} for q in usable}
    for name in names:
        u, o = load_tensor(u_index[name], name), load_tensor(o_index[name], name)
        if u.ndim != 2 or u.shape != o.shape:
            continue
        moved = u != o
        delta = float((u - o).pow(2).sum())
        for q in usable:
            try:
                qu, qo = q.grid(u), q.grid(o)
            except InputError:
                continue  # e.g. a group size that does not divide this layer
            same = qu == qo
            num = float((qu - qo).pow(2).sum())
            n_moved = int(moved.sum())
            result.layers.setdefault(q.label, []).append(LayerDiff(
                name=name, numel=u.numel(), moved=n_moved / u.numel(), same_code=float(same.float().mean()),
                same_code_of_moved=float((same & moved).sum()) / n_moved if n_moved else None,
                norm_ratio=(num / delta) ** 0.5 if delta else None))
            t = totals[q.label]
            t["numel"] += u.numel()
            t["moved"] += n_moved
            t["same"] += int(same.sum())
            t["same_moved"] += int((same & moved).sum())
            t["num"] += num
            t["den"] += delta
        if advance:
            advance(1)
    for label, t in totals.items():
        if not t["numel"]:
            continue
        result.overall[label] = {
            "moved": t["moved"] / t["numel"], "same_code": t["same"] / t["numel"],
            "same_code_of_moved": t["same_moved"] / t["moved"] if t["moved"] else None,
            "norm_ratio": (t["num"] / t["den"]) ** 0.5 if t["den"] else None,
        }
    return result
