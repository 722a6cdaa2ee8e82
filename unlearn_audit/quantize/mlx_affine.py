"""MLX's affine quantization (``mlx.core.quantize(w, group_size, bits)``, mode ``affine``), the format of the
``mlx-community`` 4-bit models people run on Macs, made as MLX makes it and without MLX installed.

Per group of ``group_size`` consecutive weights of a row (MLX's kernels, as read): ``n = 2**bits - 1``,
``scale = max((max - min) / n, 1e-7)``; the edge of larger magnitude is kept exact: where ``|min| > |max|`` the
edge is ``min`` and the scale positive, else the edge is ``max`` and the scale negative; ``q0 = round(edge /
scale)`` and, unless ``q0`` is 0, ``scale = edge / q0`` and ``bias = edge`` (else ``bias = 0``); codes ``q =
min(round((w - bias) / scale), n)``; ``w' = scale * q + bias`` with scale and bias stored in the weight's dtype
(the product and the sum each rounded to it). The two devices round differently: MLX's Metal kernels (what a Mac
runs ``mlx_lm.convert`` on, its default device) use ``round``, halves away from zero; its CPU backend uses
``std::rint``, halves to even (``mlx:4:g64:cpu``). In float32 weights a half is rare; in bfloat16 it is common
(5 of 6,144 codes of a 24x256 matrix at 4 bits). ``tests/test_mlx_affine.py`` checks the CPU rule bit for bit
against the ``mlx`` CPU wheel where it installs, and the Metal rule against the wheel where no half occurs and by
hand where one does (Metal cannot run here).

What mlx-lm's converter quantizes: every linear layer and embedding whose width the group size divides (its
loader's predicate skips the others, which stay in full precision; this quantizer records them as skipped), the
output head included; a tied head is the embedding itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .base import QuantProof, QuantResult, max_distinct, verify_proof

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)


ROUNDING = ("metal", "cpu")


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    whole = torch.trunc(x)
    return whole + torch.where((x - whole).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


@dataclass(frozen=True)
class AffineGrid:
    """MLX's grid of one matrix: ``w' = scale * q + bias`` per group of ``group_size`` columns, q in 0..n."""

    scale: torch.Tensor
    """[out, groups, 1] in the weight's dtype, as stored."""
    bias: torch.Tensor
    scale32: torch.Tensor
    """The float32 scale and bias the codes are computed with (before the cast to the weight's dtype)."""
    bias32: torch.Tensor
    n: int
    group_size: int
    shape: torch.Size
    rounding: str = "metal"

    def _round(self, x: torch.Tensor) -> torch.Tensor:
        return round_half_away(x) if self.rounding == "metal" else torch.round(x)

    def _grouped(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float().reshape(self.shape[0], -1, self.group_size)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        q = self._round((self._grouped(weight) - self.bias32) / self.scale32).clamp(0, self.n)
        return q.reshape(self.shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``scale * q + bias`` from the stored scale and bias, each operation rounded to their dtype."""
        q = codes.to(self.scale.dtype).reshape(self.shape[0], -1, self.group_size)
        return (self.scale * q + self.bias).reshape(self.shape).float()

    def steps(self) -> torch.Tensor:
        return self.scale.float().abs().expand(-1, -1, self.group_size).reshape(self.shape)

    def params(self) -> torch.Tensor:
        return torch.cat([self.scale.float(), self.bias.float()], dim=-1).reshape(-1, 2)


def affine_grid(weight: torch.Tensor, bits: int, group_size: int, rounding: str = "metal") -> AffineGrid:
    """The grid MLX fits to ``weight`` [out, in] (``in`` a multiple of ``group_size``) on the device that
    ``rounding`` names."""
    if weight.shape[-1] % group_size:
        raise InputError(f"a width of {weight.shape[-1]} is not a multiple of MLX's group size {group_size}",
                         "MLX leaves such a layer unquantized; use a group size that divides it")
    n = 2 ** bits - 1
    groups = weight.detach().float().reshape(weight.shape[0], -1, group_size)
    w_min, w_max = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    scale = torch.clamp((w_max - w_min) / n, min=1e-7)
    side = w_min.abs() > w_max.abs()
    scale = torch.where(side, scale, -scale)
    edge = torch.where(side, w_min, w_max)
    q0 = round_half_away(edge / scale) if rounding == "metal" else torch.round(edge / scale)
    at_zero = q0 == 0
    scale = torch.where(at_zero, scale, edge / torch.where(at_zero, torch.ones_like(q0), q0))
    bias = torch.where(at_zero, torch.zeros_like(edge), edge)
    dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
    return AffineGrid(scale=scale.to(dtype), bias=bias.to(dtype), scale32=scale, bias32=bias, n=n,
                      group_size=group_size, shape=weight.shape, rounding=rounding)


@dataclass(frozen=True)
class MLXAffineQuantizer:
    """MLX affine quantization at ``bits`` with groups of ``group_size`` (mlx-lm's default: 4 bits, 64)."""

    bits: int = 4
    group_size: int = 64
    rounding: str = "metal"
    """``metal`` (a Mac's GPU, MLX's default device: halves away from zero) or ``cpu`` (halves to even)."""

    stage = "weights"
    fixed_grid = True

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise InputError(f"MLX has no {self.bits}-bit affine mode", f"use one of {', '.join(map(str, BITS))}")
        if self.group_size not in GROUPS:
            raise InputError(f"MLX has no group size {self.group_size}", f"use g{', g'.join(map(str, GROUPS))}")
        if self.rounding not in ROUNDING:
            raise InputError(f"unknown MLX device rounding '{self.rounding}'", "use metal (default) or cpu")

    @property
    def label(self) -> str:
        return f"mlx:{self.bits}:g{self.group_size}" + (":cpu" if self.rounding == "cpu" else "")

    def require(self) -> None:
        """Nothing beyond torch: the rule is computed here (and checked against MLX in the suite)."""

    def load_config(self) -> None:
        return None

    def settings(self) -> dict[str, Any]:
        return {"method": "mlx", "bits": self.bits, "group_size": self.group_size, "mode": "affine",
                "scheme": "min-max with the larger-magnitude edge exact (signed scale)",
                "rounding": "half away from zero (MLX's Metal kernels)" if self.rounding == "metal"
                else "half to even (MLX's CPU backend)",
                "include_lm_head": True, "layers": "every nn.Linear (the output head too) and an untied input "
                "embedding, where the group size divides the width (mlx-lm's predicate)",
                "producer": "mlx.core.quantize (mode affine)"}

    def fit_grid(self, weight: torch.Tensor) -> AffineGrid:
        return affine_grid(weight, self.bits, self.group_size, self.rounding)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> QuantResult:
        skipped, groups, max_levels = [], 0, 0
        done: set[int] = set()  # a tied head is the embedding: quantized once
        linears = []
        for name, module in model.named_modules():
            if not isinstance(module, (nn.Linear, nn.Embedding)):
                continue
            weight = module.weight
            if isinstance(module, nn.Linear):
                linears.append(weight)
            if id(weight) in done:
                continue
            if weight.shape[-1] % self.group_size:
                skipped.append(name)
                continue
            done.add(id(weight))
            grid = self.fit_grid(weight)
            weight.copy_(grid.dequantize(grid.codes(weight)).to(weight.dtype))
            grouped = weight.detach().float().reshape(weight.shape[0], -1, self.group_size)
            max_levels = max(max_levels, max_distinct(grouped))
            groups += grouped.shape[0] * grouped.shape[1]
        quantized = sum(id(w) in done for w in linears)
        proof = QuantProof(layers_quantized=quantized, layers_skipped=skipped, groups_checked=groups,
                           max_levels=max_levels, allowed_levels=2 ** self.bits)
        return QuantResult(label=self.label, settings=self.settings(), proof=verify_proof(self.label, proof))
