"""Round-to-nearest (RTN) weight quantization, any bit width 2-8, per group of input columns.

Quantize then dequantize ("fake quantization"): weights keep their dtype but take at most 2**bits
distinct values per group, exactly the values a packed integer kernel would compute with.

* asymmetric (default): ``scale = (max - min) / (2**bits - 1)``, integer ``zero = round(-min / scale)``,
  ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)``, ``w' = (q - zero) * scale``;
* symmetric: ``scale = absmax / (2**(bits-1) - 1)``,
  ``q = clamp(round(w / scale), -2**(bits-1), 2**(bits-1) - 1)``, ``w' = q * scale``.

The zero point is an integer and is not clamped to the code range, so any group's range is covered
(AWQ's reference clamps it to [0, 2**bits - 1], which clips groups that do not span zero; with
real weight groups of 128 the two agree). A constant group is kept exactly.

Groups follow GPTQ's reference rule (``g_idx = column // group_size``, ``ceil(in / group_size)`` scales
per row): when a layer's input width is not a multiple of the group size (SmolLM2's 576, a 172-wide
MLP), the last group of each row is shorter and holds the remaining columns; a layer narrower than
the group size is one group per row. Nothing is refused for its shape.
Rounding is round-half-to-even (``torch.round``). Linear layers only; ``lm_head`` is left in full
precision unless ``include_lm_head``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..inputs.models import quantizable_linears
from .base import QuantProof, QuantResult, count_levels_per_group, pad_to_groups, verify_proof


def n_groups(in_features: int, group_size: int) -> int:
    """Groups per row: ``ceil(in_features / group_size)`` (the last one may be shorter)."""
    return -(-in_features // group_size)


@dataclass(frozen=True)
class GroupGrid:
    """The RTN grid of one weight matrix, per group: ``w' = (q - zero) * scale``.

    ``scale`` and ``zero`` have shape [out, n_groups, 1]; ``qmin``/``qmax`` bound the integer codes.
    ``in_features`` is the matrix's true width (the last group may be shorter than ``group_size``).
    """

    scale: torch.Tensor
    zero: torch.Tensor
    qmin: int
    qmax: int
    group_size: int
    in_features: int

    def grouped(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` [out, in] as [out, n_groups, group_size] (the short last group padded, see
        :func:`pad_to_groups`); :meth:`ungroup` undoes it."""
        padded = pad_to_groups(weight, self.group_size)
        return padded.reshape(weight.shape[0], padded.shape[1] // self.group_size, self.group_size)

    def ungroup(self, grouped: torch.Tensor) -> torch.Tensor:
        return grouped.reshape(grouped.shape[0], -1)[:, : self.in_features]

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``weight`` on this grid, shaped like ``weight``."""
        q = torch.round(self.grouped(weight) / self.scale) + self.zero
        return self.ungroup(q.clamp(self.qmin, self.qmax))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.ungroup((self.grouped(codes) - self.zero) * self.scale)

    def steps(self) -> torch.Tensor:
        """The quantization step at each weight (the group's scale), shaped like the matrix."""
        return self.ungroup(self.scale.expand(-1, -1, self.group_size))

    def params(self) -> torch.Tensor:
        """Scale and zero point of each group, [groups, 2]."""
        return torch.cat([self.scale, self.zero], dim=-1).reshape(-1, 2)


def rtn_grid(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool = False) -> GroupGrid:
    """The RTN grid that ``weight`` itself defines (min/max or absmax per group)."""
    out_features, in_features = weight.shape
    groups = pad_to_groups(weight.detach().float(), group_size)
    groups = groups.reshape(out_features, groups.shape[1] // group_size, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -(2 ** (bits - 1))
        scale = groups.abs().amax(dim=-1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        lo = groups.amin(dim=-1, keepdim=True)
        hi = groups.amax(dim=-1, keepdim=True)
        scale = (hi - lo) / qmax
        # a constant group c: scale |c| and zero -sign(c) represent c exactly (code 0)
        flat = lo.abs()
        scale = torch.where(scale > 0, scale, torch.where(flat > 0, flat, torch.ones_like(flat)))
        zero = torch.round(-lo / scale)
    return GroupGrid(scale=scale, zero=zero, qmin=qmin, qmax=qmax, group_size=group_size, in_features=in_features)


def rtn_fake_quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool = False) -> torch.Tensor:
    """Quantize then dequantize ``weight`` [out, in] with RTN; returns a new tensor of its dtype."""
    grid = rtn_grid(weight, bits, group_size, symmetric)
    deq = grid.dequantize(grid.codes(weight.detach().float()))
    return deq.to(weight.dtype)


@dataclass(frozen=True)
class RTNQuantizer:
    """RTN at ``bits`` (2-8) with groups of ``group_size`` input columns."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    include_lm_head: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise InputError(f"RTN bit width {self.bits} is not supported", "use a bit width from 2 to 8")
        if self.group_size < 1:
            raise InputError(f"group size {self.group_size} is not positive", "use e.g. g128")

    stage = "weights"
    fixed_grid = True

    def require(self) -> None:
        """RTN needs nothing beyond torch."""

    def load_config(self) -> None:
        return None

    @property
    def label(self) -> str:
        parts = [f"rtn:{self.bits}", f"g{self.group_size}"]
        if self.symmetric:
            parts.append("sym")
        if self.include_lm_head:
            parts.append("head")
        return ":".join(parts)

    def settings(self) -> dict[str, Any]:
        return {
            "method": "rtn",
            "bits": self.bits,
            "group_size": self.group_size,
            "scheme": "symmetric-absmax" if self.symmetric else "asymmetric-minmax",
            "rounding": "half-to-even",
            "include_lm_head": self.include_lm_head,
            "layers": "all nn.Linear" + ("" if self.include_lm_head else " except lm_head"),
        }

    def fit_grid(self, weight: torch.Tensor) -> GroupGrid:
        """The grid this quantizer fits to ``weight`` [out, in] (for the weight-level diagnostic)."""
        return rtn_grid(weight, self.bits, self.group_size, self.symmetric)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> QuantResult:
        layers, skipped = quantizable_linears(model, self.include_lm_head)
        max_levels, groups, short = 0, 0, 0
        for _, layer in layers:
            layer.weight.copy_(rtn_fake_quantize(layer.weight, self.bits, self.group_size, self.symmetric))
            max_levels = max(max_levels, count_levels_per_group(layer.weight, self.group_size))
            groups += layer.out_features * n_groups(layer.in_features, self.group_size)
            if layer.in_features % self.group_size:
                short += layer.out_features
        proof = QuantProof(layers_quantized=len(layers), layers_skipped=skipped, groups_checked=groups,
                           max_levels=max_levels, allowed_levels=2**self.bits, short_groups=short)
        return QuantResult(label=self.label, settings=self.settings(), proof=verify_proof(self.label, proof))
