"""Weight-level diagnostic: what quantization does to the update unlearning made, read from the weights alone.

Without any data, for each quantizer with a fixed grid (RTN, bitsandbytes, GGUF's legacy types) and each linear
weight matrix (``lm_head``, embeddings and norms excluded), each model on the grid the quantizer fits to it (what
the two quantized checkpoints store), with ``d = u - o`` the update and ``q = Q(u) - Q(o)`` what is left of it:

* **identical**: whether ``Q(u)`` and ``Q(o)`` are the same model: every quantized matrix has the same levels on the
  same grid, and no tensor the quantizer leaves alone (embeddings, norms, ``lm_head``, matrices its grid cannot
  take) moved. Only then is recovery certain: the two quantized models compute the same function.
* **same level**: the share of moved weights whose level in ``Q(u)`` equals the one in ``Q(o)``, read with **how far
  the grids moved** (groups whose scale, zero point or absmax changed, and by how much); and the same share on the
  original's grid (a common grid), which isolates the update from the grid's own movement.
* **kept**: ``<q, d> / ||d||^2``, the share of the update that quantization keeps in its own direction (1: all of
  it, on average; 0: none), and **cosine** ``<q, d> / (||q|| ||d||)``, how faithful what is left is to the update's
  direction (low with ``kept`` near 1: the update survives as a sparse, noisy copy of itself).
* **flips vs dither**: the levels that changed, against the number expected if each weight sat at a random place
  in its cell (``sum(min(1, |d| / step))``): near 1, rounding dithers the update into a sparse one of about the same
  expected size; near 0, the update stays inside its cells (a constructed checkpoint, or weights already on the
  grid); above 1, the grids moved (for the 4-bit float formats the step is the code book's mean spacing, which
  is coarser than the code book near zero, so there the ratio reads high). **Flip size**: the mean ``|q|`` of a
  changed weight, in the original's steps.
* **update (steps)**: mean ``|d|`` of moved weights in the original's quantization steps; **level distance**: mean
  ``|level(u) - level(o)|`` on the original's grid.

The reading claims only what the weights prove: **recovery certain** where the quantized models are identical;
**nothing moved** where the two checkpoints are equal; otherwise **probes decide**. A same-level share near 100%
does not predict recovery: the few weights that cross a level cross it in the direction of the update, a full
step each, so rounding turns a dense update into a sparse one of about the same expected size, and whether the
model's behaviour comes back depends on how coherent that update is, which no count of levels can see.

Weights are compared in the narrower of the unlearned checkpoint's stored dtype and the dtype the audit runs in (a
bfloat16 copy of a float32 original is not "moved" by its rounding; a float32 update to a bfloat16 original is seen
whole), streamed one tensor pair at a time from safetensors, on ``device`` (an accelerator when the audit has one).

Variants whose grid exists only once it is made (GPTQ/AWQ, GGUF k-quants, published files) are compared from the two
checkpoints an audit keeps: see :mod:`.kept_checkpoints`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import GridNotApplicable, InputError
from ..inputs.checkpoint import NOT_QUANTIZED as _SKIP
from ..inputs.checkpoint import tensor_index
from .base import Quantizer

READINGS = ("recovery certain", "probes decide", "nothing moved")
"""What the diagnostic can say: the quantized models are identical (recovery is certain), the checkpoints are equal
(unlearning changed nothing), or the quantized models differ and only the probes can tell what that does."""
_MANTISSA = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def compare_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The narrowest floating dtype among ``dtypes`` (fewest mantissa bits). The diagnostic passes the unlearned
    checkpoint's stored dtype and the dtype the audit runs in: a bfloat16 copy of a float32 original differs from it
    only by rounding, which is no update, while a float32 checkpoint unlearned from a bfloat16 original carries its
    update below bfloat16's resolution, which rounding both to bfloat16 would erase."""
    floats = [d for d in dtypes if d in _MANTISSA]
    return min(floats, key=lambda d: _MANTISSA[d]) if floats else torch.float32


def reading(identical: bool, moved: bool) -> str:
    """The reading (see the module docstring): only identical quantized models make recovery certain."""
    if not moved:
        return "nothing moved"
    return "recovery certain" if identical else "probes decide"


@dataclass
class LayerDiff:
    """One weight matrix under one quantizer (shares in [0, 1])."""

    name: str
    numel: int
    moved: float
    """Share of weights that unlearning changed (in the comparison dtype)."""
    same_code: float
    """Share of all weights whose level, each model on its own grid, equals the original's."""
    same_code_of_moved: float | None
    """The same among moved weights."""
    same_code_common: float
    """Share of all weights whose level on the original's grid equals the original's."""
    same_code_common_of_moved: float | None
    """The same among moved weights."""
    groups_changed: float
    """Share of groups whose grid parameters differ between the two models' own grids."""
    scale_change_max: float
    """Largest relative change of a group's scale (absmax) between the two own grids."""
    update_steps: float | None
    """Mean |u - o| of moved weights, in the original's quantization steps."""
    code_distance: float | None
    """Mean |level(u) - level(o)| of moved weights on the original's grid."""
    identical: bool = False
    """Q(u) equals Q(o) for this matrix: the same levels on the same grid."""
    kept: float | None = None
    """<Q(u) - Q(o), u - o> / ||u - o||^2: the share of the update that quantization keeps."""


@dataclass
class Totals:
    numel: int = 0
    moved: int = 0
    same: int = 0
    same_moved: int = 0
    common: int = 0
    common_moved: int = 0
    groups: int = 0
    groups_changed: int = 0
    scale_change_max: float = 0.0
    scale_change_sum: float = 0.0
    steps_sum: float = 0.0
    distance_sum: float = 0.0
    tensors: int = 0
    tensors_identical: int = 0
    dot: float = 0.0
    """sum <q, d> (q = Q(u) - Q(o), d = u - o)"""
    update_sq: float = 0.0
    """sum ||d||^2"""
    survivor_sq: float = 0.0
    """sum ||q||^2"""
    flips_expected: float = 0.0
    """sum over moved weights of min(1, |d| / step): the flips expected where each weight sits at a random place."""
    flip_steps: float = 0.0
    """sum over moved weights whose level changed of |q| / step."""
    survivor_measured: bool = False

    def add_levels(self, moved: torch.Tensor, same: torch.Tensor, common: torch.Tensor | None = None
                   ) -> dict[str, int]:
        """Count one matrix's weights: moved, same level (own grids), and on the common grid if there is one."""
        counts = {"moved": int(moved.sum()), "same": int(same.sum()), "same_moved": int((same & moved).sum()),
                  "common": 0 if common is None else int(common.sum()),
                  "common_moved": 0 if common is None else int((common & moved).sum())}
        self.numel += same.numel()
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + value)
        return counts

    def add_grids(self, changed: torch.Tensor, rel: torch.Tensor) -> None:
        """Count one matrix's groups: whether each group's parameters changed, and by how much its scale did."""
        self.groups += changed.numel()
        self.groups_changed += int(changed.sum())
        self.scale_change_max = max(self.scale_change_max, float(rel.max()))
        self.scale_change_sum += float(rel.sum())

    def add_survivor(self, d: torch.Tensor, q: torch.Tensor, step: torch.Tensor, moved: torch.Tensor,
                     flipped: torch.Tensor) -> float | None:
        """Add one matrix's update ``d`` and what quantization left of it ``q`` (same shapes; ``step``: the
        original's step per weight); returns the matrix's kept share."""
        dot, dd = float((q.double() * d.double()).sum()), float(d.double().square().sum())
        self.survivor_measured = True
        self.dot += dot
        self.update_sq += dd
        self.survivor_sq += float(q.double().square().sum())
        safe = torch.where(step > 0, step, torch.full_like(step, float("inf")))
        self.flips_expected += float((d.abs() / safe).clamp(max=1)[moved].double().sum())
        self.flip_steps += float((q.abs() / safe)[flipped].double().sum())
        return dot / dd if dd else None

    def add_tensor(self, identical: bool) -> None:
        self.tensors += 1
        self.tensors_identical += int(identical)

    def overall(self, others_moved: int = 0) -> dict[str, Any]:
        """The figures over every matrix; ``others_moved``: tensors outside them that moved (embeddings, norms,
        ``lm_head``, matrices the grid cannot take), which the quantizer leaves as they are."""
        of_moved = self.same_moved / self.moved if self.moved else None
        change_mean = self.scale_change_sum / self.groups if self.groups else 0.0
        flips = self.moved - self.same_moved
        identical = self.tensors_identical == self.tensors and not others_moved
        carry = self.survivor_measured and self.update_sq > 0
        return {"moved": self.moved / self.numel, "same_code": self.same / self.numel,
                "same_code_of_moved": of_moved, "same_code_common": self.common / self.numel,
                "same_code_common_of_moved": self.common_moved / self.moved if self.moved else None,
                "groups_changed": self.groups_changed / self.groups if self.groups else 0.0,
                "scale_change_max": self.scale_change_max, "scale_change_mean": change_mean,
                "update_steps": self.steps_sum / self.moved if self.moved else None,
                "code_distance": self.distance_sum / self.moved if self.moved else None,
                "tensors": self.tensors, "tensors_identical": self.tensors_identical, "others_moved": others_moved,
                "identical": identical,
                "kept": self.dot / self.update_sq if carry else None,
                "cosine": (self.dot / math.sqrt(self.update_sq * self.survivor_sq)
                           if carry and self.survivor_sq > 0 else (0.0 if carry else None)),
                "flips_expected": self.flips_expected / self.moved if self.survivor_measured and self.moved else None,
                "flip_ratio": (flips / self.flips_expected if self.survivor_measured and self.flips_expected > 0
                               else None),
                "flip_size": self.flip_steps / flips if self.survivor_measured and flips else None,
                "reading": reading(identical, bool(self.moved or others_moved))}


@dataclass
class WeightDiff:
    """The diagnostic for one pair of models and several quantizers."""

    unlearned: str
    original: str
    quantizers: list[str]
    compare_dtype: str = "float32"
    overall: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: dict[str, list[LayerDiff]] = field(default_factory=dict)
    not_compared: dict[str, str] = field(default_factory=dict)
    """Variants left out, with the reason (calibrated methods: their grid depends on data)."""
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per variant, matrices its grid cannot take (the library leaves them unquantized), with the reason."""
    others_moved: list[str] = field(default_factory=list)
    """Tensors outside the compared matrices (embeddings, norms, ``lm_head``, biases) that unlearning moved: the
    quantizers leave them as they are, so the quantized models differ there whatever the grids do."""
    seconds: float = 0.0
    """Wall time (kept out of :meth:`as_dict`: the record's figures do not vary between executions)."""

    def as_dict(self) -> dict[str, Any]:
        return {"unlearned": self.unlearned, "original": self.original, "quantizers": self.quantizers,
                "compare_dtype": self.compare_dtype, "readings": list(READINGS), "others_moved": self.others_moved,
                "not_compared": self.not_compared, "left_out": self.left_out, "overall": self.overall,
                "layers": {q: [vars(layer) for layer in rows] for q, rows in self.layers.items()}}


def relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """|new - old| / |old| per element (against 1 where old is 0)."""
    return (new - old).abs() / torch.where(old.abs() > 0, old.abs(), torch.ones_like(old))


def _compare_layer(u: torch.Tensor, o: torch.Tensor, quantizer: Quantizer, name: str, totals: Totals) -> LayerDiff:
    moved = u != o
    grid_o, grid_u = quantizer.fit_grid(o), quantizer.fit_grid(u)
    code_o, code_u = grid_o.codes(o), grid_u.codes(u)
    same = code_u == code_o  # each model on its own grid: what the quantized checkpoints store
    code_common = grid_o.codes(u)  # the unlearned weights on the original's grid
    common = code_common == code_o
    p_o, p_u = grid_o.params(), grid_u.params()
    changed = (p_o != p_u).any(dim=-1)
    rel = relative_change(p_u[..., 0], p_o[..., 0])
    counts = totals.add_levels(moved, same, common)
    totals.add_grids(changed, rel)
    identical = bool(same.all()) and not bool(changed.any())
    totals.add_tensor(identical)
    step = grid_o.steps()
    survivor = grid_u.dequantize(code_u) - grid_o.dequantize(code_o)
    kept = totals.add_survivor(u - o, survivor, step, moved, moved & ~same)
    n_moved = counts["moved"]
    steps_sum = float(((u - o).abs() / step)[moved].sum()) if n_moved else 0.0
    distance_sum = float((code_common - code_o).abs()[moved].float().sum()) if n_moved else 0.0
    totals.steps_sum += steps_sum
    totals.distance_sum += distance_sum
    return LayerDiff(name=name, numel=u.numel(), moved=n_moved / u.numel(), same_code=counts["same"] / u.numel(),
                     same_code_of_moved=counts["same_moved"] / n_moved if n_moved else None,
                     same_code_common=counts["common"] / u.numel(),
                     same_code_common_of_moved=counts["common_moved"] / n_moved if n_moved else None,
                     groups_changed=float(changed.float().mean()), scale_change_max=float(rel.max()),
                     update_steps=steps_sum / n_moved if n_moved else None,
                     code_distance=distance_sum / n_moved if n_moved else None, identical=identical, kept=kept)


def comparable_layers(unlearned: Path, original: Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """The two checkpoints' tensor indexes and the linear weight names the diagnostic compares."""
    u_index, o_index = tensor_index(unlearned), tensor_index(original)
    names = [n for n in u_index if n.endswith(".weight") and not any(s in n for s in _SKIP)]
    missing = [n for n in names if n not in o_index]
    if missing:
        raise InputError(f"the original lacks weight {missing[0]} (and {len(missing) - 1} more)",
                         "compare a checkpoint with the model it was unlearned from")
    return u_index, o_index, names


CALIBRATED_REASON = ("its grid is fitted to calibration data, so it can only be compared from the two checkpoints "
                     "the audit quantizes (an audit does that after its probes; `diff` alone cannot)")


def weight_diff(unlearned: Path, original: Path, quantizers: list[Quantizer], *, labels: tuple[str, str] = ("", ""),
                run_dtype: str = "float32", device: str = "cpu",
                progress: Callable[[int], Callable[[int], None]] | None = None) -> WeightDiff:
    """Compare two checkpoints under each fixed-grid quantizer (see the module docstring): every linear weight
    matrix on the quantizer's grids, and every other tensor as it is stored (the quantizers leave those alone).
    ``progress(total)`` is called once, when there is something to compare, with the number of tensors; the
    function it returns is called with 1 after each."""
    import time

    started = time.time()
    usable = [q for q in quantizers if q.fixed_grid]
    u_index, o_index, names = comparable_layers(unlearned, original)
    result = WeightDiff(labels[0] or str(unlearned), labels[1] or str(original), [q.label for q in usable],
                        not_compared={q.label: getattr(q, "not_compared_reason", CALIBRATED_REASON)
                                      for q in quantizers if not q.fixed_grid})
    if not usable:  # nothing to compare: no tensor is read
        result.seconds = round(time.time() - started, 2)
        return result
    compared = set(names)
    others = sorted((set(u_index) | set(o_index)) - compared)
    totals = {q.label: Totals() for q in usable}
    left_moved = {q.label: 0 for q in usable}
    advance = progress(len(names) + len(others)) if progress is not None else None
    target = getattr(torch, run_dtype)
    seen: set[torch.dtype] = set()
    for name in names + others:
        pair = _read_pair(u_index, o_index, name, target, device)
        if pair is None or name not in compared or pair[0].ndim != 2:  # a tensor no quantizer here changes
            if pair is None or not torch.equal(pair[0], pair[1]):
                result.others_moved.append(name)
        else:
            u, o, dtype = pair
            seen.add(dtype)
            with torch.no_grad():
                for q in usable:
                    try:
                        result.layers.setdefault(q.label, []).append(_compare_layer(u, o, q, name, totals[q.label]))
                    except GridNotApplicable as exc:
                        result.left_out.setdefault(q.label, {})[name] = exc.message
                        left_moved[q.label] += int(not torch.equal(u, o))  # kept as stored by this quantizer
        if advance:
            advance(1)
    for label, t in totals.items():
        if t.numel:
            result.overall[label] = t.overall(len(result.others_moved) + left_moved[label])
    result.compare_dtype = str(compare_dtype(*seen)).replace("torch.", "") if seen else run_dtype
    result.seconds = round(time.time() - started, 2)
    return result


def _read_pair(u_index: dict[str, Path], o_index: dict[str, Path], name: str, target: torch.dtype, device: str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.dtype] | None:
    """Tensor ``name`` of both checkpoints in float32, each first rounded to the comparison dtype, and that dtype;
    None when only one checkpoint has it or the shapes differ."""
    from safetensors import safe_open

    if name not in u_index or name not in o_index:
        return None
    with safe_open(str(u_index[name]), framework="pt") as hu, safe_open(str(o_index[name]), framework="pt") as ho:
        u_raw, o_raw = hu.get_tensor(name), ho.get_tensor(name)
    if u_raw.shape != o_raw.shape:
        return None
    if not (u_raw.is_floating_point() and o_raw.is_floating_point()):
        return u_raw, o_raw, u_raw.dtype
    dtype = compare_dtype(u_raw.dtype, target)  # the unlearned model as stored and as the audit runs it
    return u_raw.to(device=device).to(dtype).float(), o_raw.to(device=device).to(dtype).float(), dtype
