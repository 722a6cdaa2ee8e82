"""FP8, MXFP4 and NVFP4 (unlearn_audit.quantize.floats) against their producers' own code, bit for bit: torchao's
``_choose_scale_float8``/``_quantize_affine_float8``/``_dequantize_affine_float8``, ``to_mx``/``to_dtype`` (FLOOR)
and ``NVFP4Tensor.to_nvfp4(..., per_tensor_scale)``; DeepSeek-V3.1's UE8M0 scale rule against ``math.log2`` on
doubles. On stories260K's linear weights (widths 64 and 172: not a multiple of 32) and on a matrix with an odd
shape, outliers and a block of zeros. Widths that are not a multiple of the block are compared with the producer run
on the zero-padded matrix (torchao asserts divisibility), then cut back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearn_audit.quantize import parse_variant
from unlearn_audit.quantize.floats import (E2M1_VALUES, fp8_grid, mlx_mxfp4_grid, mlx_nvfp4_grid, mxfp4_grid,
                                           nvfp4_grid, round_e2m1)

torchao = pytest.importorskip("torchao", reason="the producer checks need torchao (the test extra installs it)")


def _weights(stories) -> dict[str, torch.Tensor]:
    model, _ = stories
    out = {n: m.weight.detach().float().clone() for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    assert any(w.shape[1] % 32 for w in out.values())  # an odd width among them (172)
    g = torch.Generator().manual_seed(7)
    odd = torch.randn(130, 200, generator=g) * 0.02
    odd[3, 5], odd[100, 150] = 1.7, -0.9  # outliers: their tiles' scales differ by orders of magnitude
    odd[40:41, 64:96] = 0.0  # a whole MX block of zeros
    out["odd"] = odd
    return out


def _pad(w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.nn.functional.pad(w, (0, -w.shape[1] % cols, 0, -w.shape[0] % rows))


def test_e2m1_rounding_is_nearest_with_ties_to_even():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.9, -0.25, -5.0, 0.26, 100.0])
    # by hand: ties go to the value whose code is even (0, 1.0, 2.0, 4.0), beyond 6 saturates
    expected = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.0, -4.0, 0.5, 6.0])
    assert torch.equal(round_e2m1(x), expected)
    assert E2M1_VALUES.tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("tile,block", [("tensor", None), ("channel", (1, None)), ("block128", (128, 128))])
def test_fp8_equals_torchao(stories, tile, block):
    from torchao.quantization.quant_primitives import (
        _choose_scale_float8, _dequantize_affine_float8, _quantize_affine_float8)

    for name, w in _weights(stories).items():
        rows, cols = (w.shape[0], w.shape[1]) if block is None else (block[0], block[1] or w.shape[1])
        padded = _pad(w, rows, cols)
        scale = _choose_scale_float8(padded, block_size=[rows, cols])
        theirs = _dequantize_affine_float8(_quantize_affine_float8(padded, scale), scale)[: w.shape[0], : w.shape[1]]
        ours = fp8_grid(w, tile).quantize(w)
        assert torch.equal(ours, theirs), (name, tile)


def test_fp8_ue8m0_scales_are_deepseeks_ceiling_powers_of_two(stories):
    for name, w in _weights(stories).items():
        grid = fp8_grid(w, "block128", ue8m0=True)
        padded = _pad(w, 128, 128)
        for i in range(0, padded.shape[0], 128):
            for j in range(0, padded.shape[1], 128):
                amax = float(padded[i:i + 128, j:j + 128].abs().max())
                scale = float(grid.scale[i // 128, j // 128, 0])
                if amax == 0:
                    assert scale == 0
                    continue
                descale = float(torch.tensor(amax) * torch.tensor(1 / 448))  # float32, as the kernel computes it
                assert scale == 2.0 ** math.ceil(math.log2(descale)), (name, i, j)
        q = grid.quantize(w)
        assert float((q - w).abs().max()) <= float(grid.scale.max()) * 32  # never clipped: at most half a step


def test_mxfp4_equals_torchao_floor(stories):
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx

    for name, w in _weights(stories).items():
        padded = _pad(w, 1, 32).contiguous()
        scale, data = to_mx(padded, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR)
        theirs = to_dtype(data, scale, torch.float4_e2m1fn_x2, 32, torch.float32)[:, : w.shape[1]]
        assert torch.equal(mxfp4_grid(w).quantize(w), theirs), name


def test_nvfp4_equals_torchao_with_a_tensor_scale(stories):
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    for name, w in _weights(stories).items():
        padded = _pad(w, 1, 16).contiguous()
        t = per_tensor_amax_to_scale(padded.abs().amax())
        theirs = NVFP4Tensor.to_nvfp4(padded, per_tensor_scale=t).dequantize(torch.float32)[:, : w.shape[1]]
        assert torch.equal(nvfp4_grid(w).quantize(w), theirs), name


@pytest.mark.parametrize("variant", ["fp8:block128", "mxfp4", "nvfp4"])
def test_codes_are_ordinal_and_dequantize_to_the_quantized_weights(stories, variant):
    """What ``diff`` reads: codes are levels in value order, and ``dequantize(codes(w))`` is the format's value."""
    q = parse_variant(variant)
    w = _weights(stories)["odd"]
    grid = q.fit_grid(w)
    codes = grid.codes(w)
    assert torch.equal(grid.dequantize(codes), grid.quantize(w))
    order = torch.argsort(w[7, :16])  # within one tile (16 columns lie in one for each format), a larger weight
    row_codes = codes[7, :16][order]  # never gets a smaller code
    assert bool((row_codes[1:] >= row_codes[:-1]).all()) and row_codes[-1] > row_codes[0]
    assert grid.params().shape[1] == 1 and grid.steps().shape == w.shape


def test_unknown_settings_are_refused_in_one_line():
    from unlearn_audit.errors import UsageError

    for bad, said in (("fp8:block64", "unknown FP8 tiling"), ("fp8:block128:e5m2", "unknown FP8 option"),
                      ("mxfp4:g16", "unknown mxfp4 setting 'g16'"), ("nvfp4:mlx:mlx", "unknown nvfp4 setting")):
        with pytest.raises(UsageError, match=said):
            parse_variant(bad)


def test_e2m1_ties_toward_zero_as_mlx_rounds_them():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -1.75, 0.26])
    assert round_e2m1(x, ties="zero").tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, -1.5, 0.5]


@pytest.mark.parametrize("mode,grid,dtype", [(m, g, d) for m, g in (("mxfp4", mlx_mxfp4_grid), ("nvfp4", mlx_nvfp4_grid))
                                             for d in ("float32", "bfloat16")])
def test_mlx_formats_equal_mlx(stories, mode, grid, dtype):
    """mxfp4:mlx and nvfp4:mlx against the mlx wheel's own ``quantize``/``dequantize`` (modes mxfp4, nvfp4), on the
    same matrices and on a block built to land on every E2M1 tie (scale 2**-3 exactly: amax 0.75)."""
    mx = pytest.importorskip("mlx.core", reason="the mlx CPU wheel does not install here (pip install 'mlx[cpu]')")
    group = 32 if mode == "mxfp4" else 16
    ties = torch.zeros(2, 64)
    ties[:, :12] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -2.5, -1.75, 0.1]) / 8
    ties[:, 16:28] = ties[:, :12]
    matrices = {**{n: w for n, w in _weights(stories).items() if w.shape[1] % group == 0}, "ties": ties}
    for name, w in matrices.items():
        w = w.to(getattr(torch, dtype))
        ours = grid(w).quantize(w).numpy()
        arr = mx.array(w.float().numpy()).astype(getattr(mx, dtype))
        packed, scales = mx.quantize(arr, group_size=group, bits=4, mode=mode)
        theirs = np.array(mx.dequantize(packed, scales, group_size=group, bits=4, mode=mode).astype(mx.float32))
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} {mode} {dtype}")
