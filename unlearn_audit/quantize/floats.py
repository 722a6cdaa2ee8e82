"""The floating-point weight formats people deploy: FP8 E4M3 (per tensor, per output channel, or 128x128 blocks,
float32 or power-of-two UE8M0 scales), MXFP4 (OCP microscaling) and NVFP4.

Quantize then dequantize ("fake quantization", as ``rtn``): each weight becomes the value the format's kernels
compute with, ``element * scale``. Every rule below is the producer's, as read in its code, and the suite checks
the result bit for bit against the producer itself (torchao, see tests/test_float_formats.py):

* **FP8 E4M3** (torchao ``_choose_scale_float8`` / ``_quantize_affine_float8``; DeepSeek-V3's ``weight_quant``):
  ``scale = amax / 448`` per tile (float32), ``e = float8_e4m3fn(clamp(w / scale, -448, 448))`` (torch's cast:
  round half to even; the clamp first, as the cast does not saturate), ``w' = float(e) * scale``. ``:ue8m0``
  stores power-of-two scales as DeepSeek-V3.1's kernels make them (``fast_round_scale``: ``2 ** ceil(log2(amax *
  (1 / 448)))``, so the largest weight never clips); tiles ``tensor``, ``channel`` (a row of the [out, in] matrix)
  or ``block128`` (128 x 128, DeepSeek-V3's and Qwen3's FP8 checkpoints).
* **MXFP4** (OCP MX v1.0 and torchao ``to_mx`` with ``ScaleCalculationMode.FLOOR``): blocks of 32 along the input
  dimension, ``scale = 2 ** (floor(log2(amax)) - 2)`` (an E8M0 exponent, clamped to [-127, 128], at least the
  smallest normal float32), elements E2M1 (0, 0.5, 1, 1.5, 2, 3, 4, 6, signed) rounded half to even and saturated
  at 6 (amax / scale reaches up to 8: the block's largest weights can clip, as OCP's rule has it).
* **NVFP4** (torchao ``nvfp4_quantize`` with a per-tensor scale, as compressed-tensors' ``NVFP4A16`` stores
  ``weight_global_scale``): ``t = amax(W) / (448 * 6)``; blocks of 16 along the input dimension with
  ``s = float8_e4m3fn(clamp(amax_block / 6 / t, 2**-6, 448))``; ``e = E2M1(clamp(w * ((1 / t) / s), -6, 6))``;
  ``w' = e * (t * s)``.

``mxfp4:mlx`` and ``nvfp4:mlx`` are MLX's variants of the last two (measured bit for bit on the mlx 0.32 wheel): the
MXFP4 scale is ``2 ** ceil(log2(amax / 6))``, NVFP4 has no per-tensor scale (``s = e4m3(amax / 6)``), and an element's
tie goes toward zero.

A matrix whose width (or height, for 128 x 128 tiles) is not a multiple of the tile is padded with zeros to one
(zeros change no tile's amax) and cut back: the last tile of each row is shorter, as GPTQ's groups are.
Linear layers only; ``lm_head`` stays in full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..inputs.models import quantizable_linears
from .base import QuantProof, QuantResult, max_distinct, verify_proof

E4M3_MAX = 448.0
E2M1_MAX = 6.0
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP8_TILES = {"tensor": None, "channel": (1, None), "block128": (128, 128)}
"""Tile shape [rows, columns] of one scale (None: the whole dimension)."""


def _e4m3_table() -> torch.Tensor:
    """Every finite float8_e4m3fn value, sorted, zero once: the ordinal codes of the format."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.unique(values[torch.isfinite(values)])


def _e2m1_table() -> torch.Tensor:
    magnitudes = torch.tensor(E2M1_MAGNITUDES)
    return torch.unique(torch.cat([-magnitudes, magnitudes]))


E4M3_VALUES = _e4m3_table()
"""253 values, -448 ... 448."""
E2M1_VALUES = _e2m1_table()
"""15 values, -6 ... 6."""


def round_e2m1(x: torch.Tensor, ties: str = "even") -> torch.Tensor:
    """``x`` (float32) rounded to the nearest E2M1 value, saturated at +-6; a tie goes to the even code (OCP,
    torchao) or, with ``ties="zero"``, to the smaller magnitude (MLX: the first of its code table's minima)."""
    magnitudes = torch.tensor(E2M1_MAGNITUDES, device=x.device)
    mids = (magnitudes[1:] + magnitudes[:-1]) / 2
    a = x.abs().clamp(max=E2M1_MAX)
    index = torch.bucketize(a, mids)  # a == mids[i] gives i: the lower neighbour
    if ties == "even":
        tie = (index < len(mids)) & (a == mids[index.clamp(max=len(mids) - 1)]) & (index % 2 == 1)
        index = index + tie.long()  # a tie goes to the even code (index 0, 2, 4, 6: mantissa bit 0)
    return torch.copysign(magnitudes[index], x)


def _tiles(weight: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``weight`` [out, in] zero-padded to multiples of the tile and viewed as [tiles_r, tiles_c, rows * cols]."""
    out, width = weight.shape
    padded = torch.nn.functional.pad(weight, (0, -width % cols, 0, -out % rows))
    r, c = padded.shape[0] // rows, padded.shape[1] // cols
    return padded.reshape(r, rows, c, cols).permute(0, 2, 1, 3).reshape(r, c, rows * cols)


def _untile(tiles: torch.Tensor, rows: int, cols: int, shape: torch.Size) -> torch.Tensor:
    r, c = tiles.shape[:2]
    full = tiles.reshape(r, c, rows, cols).permute(0, 2, 1, 3).reshape(r * rows, c * cols)
    return full[: shape[0], : shape[1]]


def _pow2_floor_exponent(amax: torch.Tensor) -> torch.Tensor:
    """The unbiased exponent field of float32 ``amax`` (floor(log2(amax)) for normal numbers), from its bits."""
    return ((amax.float().view(torch.int32) >> 23) & 0xFF) - 127


def ue8m0_ceil(x: torch.Tensor) -> torch.Tensor:
    """``2 ** ceil(log2(x))`` for float32 ``x`` as DeepSeek's ``fast_log2_ceil`` computes it from the bits (the
    exponent field, plus one where any mantissa bit is set)."""
    bits = x.float().view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).int()
    return ((exponent + 127) << 23).view(torch.float32)


@dataclass(frozen=True)
class FloatGrid:
    """A fitted floating-point grid: ``w' = values[code] * scale`` per tile, ``values`` the format's sorted element
    values (so codes are ordinal levels and code distances count grid points)."""

    scale: torch.Tensor
    """[tiles_r, tiles_c, 1] float32: the value one element unit stands for in each tile."""
    values: torch.Tensor
    rows: int
    cols: int
    shape: torch.Size
    element: str
    """``e4m3`` or ``e2m1``: how ``w / scale`` is rounded."""
    inverse: torch.Tensor | None = None
    """NVFP4: the producer multiplies by a reciprocal per tile (``w * ((1 / t) / s)``) instead of dividing; None:
    it divides by ``scale``."""
    ties: str = "even"
    """How an E2M1 element's tie is rounded (see :func:`round_e2m1`)."""

    def _elements(self, weight: torch.Tensor) -> torch.Tensor:
        tiles = _tiles(weight.float(), self.rows, self.cols)
        if self.inverse is not None:
            scaled = tiles * self.inverse
        else:
            safe = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
            scaled = torch.where(self.scale > 0, tiles / safe, torch.zeros_like(tiles))
        if self.element == "e4m3":
            return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
        return round_e2m1(scaled, self.ties)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        levels = torch.bucketize(self._elements(weight), self.values.to(weight.device))
        return _untile(levels, self.rows, self.cols, self.shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        tiles = _tiles(codes.long(), self.rows, self.cols)
        return _untile(self.values.to(codes.device)[tiles] * self.scale, self.rows, self.cols, self.shape)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` on this grid (float32), the value the format computes with."""
        return _untile(self._elements(weight) * self.scale, self.rows, self.cols, self.shape)

    def steps(self) -> torch.Tensor:
        """The mean spacing of the format's values times each tile's scale (a floating-point grid is finer near
        zero; the mean is what a move is measured in, as for bitsandbytes' code books)."""
        spacing = float(self.values[-1] - self.values[0]) / (len(self.values) - 1)
        tiles = (self.scale * spacing).expand(-1, -1, self.rows * self.cols)
        return _untile(tiles, self.rows, self.cols, self.shape)

    def params(self) -> torch.Tensor:
        return self.scale.reshape(-1, 1)


def fp8_grid(weight: torch.Tensor, tile: str = "block128", ue8m0: bool = False) -> FloatGrid:
    w = weight.detach().float()
    rows, cols = _tile_shape(tile, w.shape)
    amax = _tiles(w, rows, cols).abs().amax(dim=-1, keepdim=True)
    scale = ue8m0_ceil(amax * torch.tensor(1 / E4M3_MAX)) if ue8m0 else amax / E4M3_MAX
    scale = torch.where(amax > 0, scale, torch.zeros_like(scale))
    return FloatGrid(scale=scale, values=E4M3_VALUES, rows=rows, cols=cols, shape=w.shape, element="e4m3")


def mxfp4_grid(weight: torch.Tensor) -> FloatGrid:
    w = weight.detach().float()
    amax = _tiles(w, 1, 32).abs().amax(dim=-1, keepdim=True)
    exponent = (_pow2_floor_exponent(amax) - 2).clamp(-127, 128)
    scale = ((exponent + 127) << 23).view(torch.float32).clamp(min=torch.finfo(torch.float32).tiny)
    return FloatGrid(scale=scale, values=E2M1_VALUES, rows=1, cols=32, shape=w.shape, element="e2m1")


def mlx_mxfp4_grid(weight: torch.Tensor) -> FloatGrid:
    """MXFP4 as the mlx 0.32 wheel makes it (``mx.quantize(w, mode="mxfp4")``, measured bit for bit): the power of
    two at or above ``amax / 6`` (so nothing clips), elements rounded to the nearest E2M1 value with ties toward
    zero."""
    w = weight.detach().float()
    amax = _tiles(w, 1, 32).abs().amax(dim=-1, keepdim=True)
    exponent = torch.ceil(torch.log2(amax / E2M1_MAX)).clamp(-127, 127)
    scale = torch.where(amax > 0, torch.exp2(exponent), torch.zeros_like(amax))
    return FloatGrid(scale=scale, values=E2M1_VALUES, rows=1, cols=32, shape=w.shape, element="e2m1", ties="zero")


def mlx_nvfp4_grid(weight: torch.Tensor) -> FloatGrid:
    """NVFP4 as the mlx 0.32 wheel makes it without a global scale: one E4M3 scale ``amax / 6`` per 16 (torch's
    cast), elements rounded to the nearest E2M1 value with ties toward zero."""
    w = weight.detach().float()
    block = (_tiles(w, 1, 16).abs().amax(dim=-1, keepdim=True) / E2M1_MAX).to(torch.float8_e4m3fn).float()
    return FloatGrid(scale=block, values=E2M1_VALUES, rows=1, cols=16, shape=w.shape, element="e2m1", ties="zero")


def nvfp4_grid(weight: torch.Tensor) -> FloatGrid:
    w = weight.detach().float()
    tensor_scale = w.abs().amax() / (E4M3_MAX * E2M1_MAX)
    if not tensor_scale > 0:  # an all-zero matrix: any scale represents it
        tensor_scale = torch.tensor(1.0)
    block = _tiles(w, 1, 16).abs().amax(dim=-1, keepdim=True) / E2M1_MAX
    tiny = torch.finfo(torch.float8_e4m3fn).tiny
    block_fp8 = (block / tensor_scale).clamp(tiny, E4M3_MAX).to(torch.float8_e4m3fn).float()
    return FloatGrid(scale=tensor_scale * block_fp8, values=E2M1_VALUES, rows=1, cols=16, shape=w.shape,
                     element="e2m1", inverse=(1.0 / tensor_scale) / block_fp8)


def _tile_shape(tile: str, shape: torch.Size) -> tuple[int, int]:
    if tile not in FP8_TILES:
        raise InputError(f"unknown FP8 tiling '{tile}'", f"use one of {', '.join(FP8_TILES)}, e.g. fp8:block128")
    spec = FP8_TILES[tile]
    if spec is None:
        return shape[0], shape[1]
    rows, cols = spec
    return rows, cols if cols is not None else shape[1]


@dataclass(frozen=True)
class FloatFormatQuantizer:
    """One floating-point weight format: ``fp8`` (with ``tile`` and ``ue8m0``), ``mxfp4`` or ``nvfp4``."""

    format: str = "fp8"
    tile: str = "block128"
    ue8m0: bool = False
    producer: str = "ocp"
    """mxfp4/nvfp4: ``ocp`` (OCP's rule as torchao makes it; for nvfp4 with a per-tensor scale) or ``mlx``."""

    stage = "weights"
    fixed_grid = True

    def __post_init__(self) -> None:
        if self.format not in ("fp8", "mxfp4", "nvfp4"):
            raise InputError(f"unknown floating-point format '{self.format}'", "use fp8, mxfp4 or nvfp4")
        if self.format == "fp8":
            _tile_shape(self.tile, torch.Size((1, 1)))
        if self.producer not in ("ocp", "mlx"):
            raise InputError(f"unknown producer '{self.producer}'", f"use {self.format} or {self.format}:mlx")

    @property
    def label(self) -> str:
        if self.format != "fp8":
            return self.format + (":mlx" if self.producer == "mlx" else "")
        return f"fp8:{self.tile}" + (":ue8m0" if self.ue8m0 else "")

    @property
    def bits(self) -> int:
        return 8 if self.format == "fp8" else 4

    def require(self) -> None:
        """These formats need nothing beyond torch (its float8_e4m3fn cast)."""

    def load_config(self) -> None:
        return None

    def settings(self) -> dict[str, Any]:
        base = {"method": self.format, "bits": self.bits, "layers": "all nn.Linear except lm_head",
                "include_lm_head": False}
        if self.format == "fp8":
            return {**base, "element": "E4M3 (float8_e4m3fn), clamped to +-448, round half to even",
                    "tile": self.tile, "scale": "UE8M0: 2**ceil(log2(amax / 448)) (DeepSeek-V3.1)" if self.ue8m0
                    else "float32: amax / 448", "producer": "torchao _quantize_affine_float8 / DeepSeek-V3"}
        if self.producer == "mlx":
            return {**base, "element": "E2M1, nearest, ties toward zero, saturating",
                    "block_size": 32 if self.format == "mxfp4" else 16,
                    "scale": "E8M0: 2**ceil(log2(amax / 6))" if self.format == "mxfp4" else "E4M3: amax / 6",
                    "producer": "mlx 0.32 mx.quantize (mode %s)" % self.format}
        if self.format == "mxfp4":
            return {**base, "element": "E2M1, round half to even, saturating", "block_size": 32,
                    "scale": "E8M0: 2**(floor(log2(amax)) - 2) (OCP MX v1.0)", "producer": "torchao to_mx FLOOR"}
        return {**base, "element": "E2M1, round half to even, saturating", "block_size": 16,
                "scale": "E4M3 per block of 16 times a float32 per-tensor scale amax / (448 * 6)",
                "producer": "torchao nvfp4_quantize with per_tensor_scale (compressed-tensors NVFP4A16)"}

    def fit_grid(self, weight: torch.Tensor) -> FloatGrid:
        if self.format == "fp8":
            return fp8_grid(weight, self.tile, self.ue8m0)
        if self.producer == "mlx":
            return mlx_mxfp4_grid(weight) if self.format == "mxfp4" else mlx_nvfp4_grid(weight)
        return mxfp4_grid(weight) if self.format == "mxfp4" else nvfp4_grid(weight)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> QuantResult:
        layers, skipped = quantizable_linears(model, False)
        max_levels, groups, short = 0, 0, 0
        for _, layer in layers:
            grid = self.fit_grid(layer.weight)
            layer.weight.copy_(grid.quantize(layer.weight).to(layer.weight.dtype))
            tiles = _tiles(layer.weight.detach().float(), grid.rows, grid.cols)
            max_levels = max(max_levels, max_distinct(tiles))
            groups += tiles.shape[0] * tiles.shape[1]
            short += (layer.in_features % grid.cols != 0) * tiles.shape[0]
        allowed = len(E4M3_VALUES) if self.format == "fp8" else len(E2M1_VALUES)
        proof = QuantProof(layers_quantized=len(layers), layers_skipped=skipped, groups_checked=groups,
                           max_levels=max_levels, allowed_levels=allowed, short_groups=short)
        return QuantResult(label=self.label, settings=self.settings(), proof=verify_proof(self.label, proof))

