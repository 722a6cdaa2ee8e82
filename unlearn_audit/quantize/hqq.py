"""HQQ (half-quadratic quantization) through the ``hqq`` package itself: ``hqq:4:g64`` is its default
``BaseQuantizeConfig`` (``hqq_base_quant_config``: 4 bits, groups of 64 along the input axis, the proximal optimiser
on, the zero point rounded at 4 bits), quantized with ``Quantizer.quantize(..., device="cpu")`` and read back with
its ``Quantizer.dequantize`` in float32, on every linear layer but ``lm_head``.

HQQ groups the row-major flattened matrix in runs of ``group_size`` (``W.reshape(-1, group_size)``), so a width the
group does not divide gives groups that straddle two rows; it needs only the matrix's size to be a multiple of the
group (else the layer is refused, as HQQ refuses it). Its grid depends on the weights alone (no calibration data):
``w' = (q - zero) * scale`` per group with ``q = round(w / scale + zero)`` in 0..2**bits - 1, the scale and zero the
optimiser's, so ``diff`` can place another model's weights on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..inputs.models import quantizable_linears
from .base import QuantProof, QuantResult, max_distinct, verify_proof

INSTALL = "pip install -c constraints.txt 'unlearn-audit[hqq]'"
BITS = (2, 3, 4, 8)


def _hqq():  # noqa: ANN202
    try:
        from hqq.core.quantize import Quantizer
    except ImportError:
        raise InputError("hqq variants need the hqq package", f"run {INSTALL}") from None
    return Quantizer


@dataclass(frozen=True)
class HQQGrid:
    """HQQ's grid of one matrix: groups of ``group_size`` consecutive weights of the flattened matrix."""

    scale: torch.Tensor
    """[groups, 1]: the dequantization scale (HQQ's ``meta["scale"]``)."""
    zero: torch.Tensor
    qmax: int
    group_size: int
    shape: torch.Size

    def _groups(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float().reshape(-1, self.group_size)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """HQQ's ``round(W * (1 / scale) + zero)`` clamped to its range."""
        q = torch.round(self._groups(weight) * (1.0 / self.scale) + self.zero).clamp(0, self.qmax)
        return q.reshape(self.shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return ((self._groups(codes) - self.zero) * self.scale).reshape(self.shape)

    def steps(self) -> torch.Tensor:
        return self.scale.abs().expand(-1, self.group_size).reshape(self.shape)

    def params(self) -> torch.Tensor:
        return torch.cat([self.scale, self.zero], dim=-1)


def hqq_quantize(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, HQQGrid]:
    """``weight`` through HQQ's own quantizer: (its dequantized values in float32, its grid)."""
    quantizer = _hqq()
    if weight.numel() % group_size:
        raise InputError(f"a matrix of {tuple(weight.shape)} is not a whole number of HQQ groups of {group_size}",
                         "use a group size that divides the layer's size")
    codes, meta = quantizer.quantize(weight.detach().float(), nbits=bits, channel_wise=True, group_size=group_size,
                                     optimize=True, round_zero=bits == 4, axis=1, bitpack=False,
                                     compute_dtype=torch.float32, device="cpu")
    meta["compute_dtype"] = torch.float32
    values = quantizer.dequantize(codes, meta).float()
    grid = HQQGrid(scale=meta["scale"].float(), zero=meta["zero"].float(), qmax=2 ** bits - 1,
                   group_size=group_size, shape=weight.shape)
    return values, grid


@dataclass(frozen=True)
class HQQQuantizer:
    """HQQ at ``bits`` with groups of ``group_size`` (HQQ's default config: 4 bits, 64)."""

    bits: int = 4
    group_size: int = 64

    stage = "weights"
    fixed_grid = True

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise InputError(f"HQQ at {self.bits} bits is not offered here", f"use one of {', '.join(map(str, BITS))}")
        if self.group_size < 8 or self.group_size % 8:
            raise InputError(f"HQQ's group size must be a multiple of 8, not {self.group_size}", "use e.g. g64")

    @property
    def label(self) -> str:
        return f"hqq:{self.bits}:g{self.group_size}"

    def require(self) -> None:
        _hqq()

    def load_config(self) -> None:
        return None

    def settings(self) -> dict[str, Any]:
        import hqq

        return {"method": "hqq", "bits": self.bits, "group_size": self.group_size, "library_version": hqq.__version__,
                "scheme": "affine per group of the flattened matrix (axis 1), proximal optimiser, zero point "
                          + ("rounded" if self.bits == 4 else "not rounded"),
                "include_lm_head": False, "layers": "all nn.Linear except lm_head"}

    def fit_grid(self, weight: torch.Tensor) -> HQQGrid:
        return hqq_quantize(weight, self.bits, self.group_size)[1]

    @torch.no_grad()
    def apply(self, model: nn.Module) -> QuantResult:
        layers, skipped = quantizable_linears(model, False)
        max_levels, groups = 0, 0
        for _, layer in layers:
            values, _ = hqq_quantize(layer.weight, self.bits, self.group_size)
            layer.weight.copy_(values.to(layer.weight.dtype))
            grouped = layer.weight.detach().float().reshape(-1, self.group_size)
            max_levels = max(max_levels, max_distinct(grouped))
            groups += grouped.shape[0]
        proof = QuantProof(layers_quantized=len(layers), layers_skipped=skipped, groups_checked=groups,
                           max_levels=max_levels, allowed_levels=2 ** self.bits)
        return QuantResult(label=self.label, settings=self.settings(), proof=verify_proof(self.label, proof))
