"""MLX's affine quantization (unlearn_audit.quantize.mlx_affine) against MLX itself (``mlx.core.quantize`` and
``dequantize`` on the CPU wheel), bit for bit, on stories260K's weights whose width the group divides and on a matrix
with outliers, a constant group and a group that does not span zero, in float32 and bfloat16; without MLX, against
the rule computed by hand on a group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearn_audit.quantize import parse_variant
from unlearn_audit.quantize.mlx_affine import affine_grid, round_half_away


def _matrices(stories) -> dict[str, torch.Tensor]:
    model, _ = stories
    out = {n: m.weight.detach().float().clone() for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and m.weight.shape[1] % 64 == 0}
    g = torch.Generator().manual_seed(3)
    odd = torch.randn(24, 256, generator=g) * 0.03
    odd[0, 7] = 2.5  # an outlier: its edge is the maximum
    odd[1, :64] = 0.125  # a constant group
    odd[2, 64:128] = odd[2, 64:128].abs() + 0.5  # a group that does not span zero
    odd[3, :64] = -odd[3, :64].abs() - 0.01
    out["odd"] = odd
    return out


def test_rounding_halves_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.4])
    assert round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -3.0, 0.0, 2.0]


def test_one_group_by_hand():
    """Group [-0.3, 0.1, 0.2, ...] with 2 bits: n = 3, scale (0.2 + 0.3) / 3 = 1/6; |min| > |max|, so the edge is
    min = -0.3, q0 = round(-0.3 / (1/6)) = round(-1.8) = -2, scale = -0.3 / -2 = 0.15, bias = -0.3; codes
    round((w + 0.3) / 0.15): -0.3 -> 0, 0.1 -> round(2.67) = 3, 0.2 -> round(3.33) = 3, 0.0 -> 2."""
    w = torch.tensor([[-0.3, 0.1, 0.2, 0.0] * 8])
    grid = affine_grid(w, 2, 32)
    assert float(grid.scale32.flatten()[0]) == pytest.approx(0.15, rel=1e-6)
    assert float(grid.bias32.flatten()[0]) == pytest.approx(-0.3, rel=1e-7)
    assert grid.codes(w)[0, :4].tolist() == [0, 3, 3, 2]
    assert grid.dequantize(grid.codes(w))[0, :4].tolist() == pytest.approx([-0.3, 0.15, 0.15, 0.0], abs=1e-7)


def test_metal_and_cpu_round_a_half_differently():
    """A group whose codes land on halves: 0 .. 0.3 in steps of 0.02 with 4 bits: n = 15, scale 0.3 / 15 = 0.02
    (negative: the edge is the maximum 0.3), bias 0.3; 0.01 / ... gives (0.01 - 0.3) / -0.02 = 14.5: Metal
    rounds it to 15, the CPU to 14 (even)."""
    w = torch.tensor([[0.0, 0.3, 0.01] + [0.1] * 29], dtype=torch.float64).float()
    metal, cpu = affine_grid(w, 4, 32, "metal"), affine_grid(w, 4, 32, "cpu")
    half = float((w[0, 2] - metal.bias32.flatten()[0]) / metal.scale32.flatten()[0])
    assert half == pytest.approx(14.5, abs=1e-5)
    if half == 14.5:  # exactly a half in float32 arithmetic
        assert int(metal.codes(w)[0, 2]) == 15 and int(cpu.codes(w)[0, 2]) == 14


@pytest.mark.parametrize("bits,group", [(4, 64), (3, 32), (8, 128), (2, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rounding", ["cpu", "metal"])
def test_equals_mlx(stories, bits, group, dtype, rounding):
    """The CPU rule equals the CPU wheel everywhere; the Metal rule equals it wherever no code is a half."""
    mx = pytest.importorskip("mlx.core", reason="the mlx CPU wheel does not install here (pip install 'mlx[cpu]')")
    mlx_dtype = {torch.float32: mx.float32, torch.bfloat16: mx.bfloat16}[dtype]
    for name, w in _matrices(stories).items():
        if w.shape[1] % group:
            continue
        w = w.to(dtype)
        grid = affine_grid(w, bits, group, rounding)
        ratio = ((w.float().reshape(w.shape[0], -1, group) - grid.bias32) / grid.scale32).reshape(w.shape)
        compared = np.ones(w.shape, dtype=bool)
        if rounding == "metal":  # a half: Metal and the CPU differ by design (the test above), in a weight's code
            cpu = affine_grid(w, bits, group, "cpu")  # or in the group's q0 (then its whole grid differs)
            same_grid = (cpu.scale32 == grid.scale32).expand(-1, -1, group).reshape(w.shape)
            compared = (((ratio - torch.trunc(ratio)).abs() != 0.5) & same_grid).numpy()
            assert compared.mean() > 0.9
        ours = grid.dequantize(grid.codes(w)).numpy()
        arr = mx.array(w.float().numpy()).astype(mlx_dtype)
        packed, scales, biases = mx.quantize(arr, group_size=group, bits=bits)
        theirs = np.array(mx.dequantize(packed, scales, biases, group_size=group, bits=bits).astype(mx.float32))
        np.testing.assert_array_equal(ours[compared], theirs[compared], err_msg=f"{name} {bits} g{group} {dtype}")
        if rounding == "cpu":  # Metal's grid differs where q0 was a half (excluded above)
            np.testing.assert_array_equal(grid.scale.float().numpy(), np.array(scales.astype(mx.float32))[..., None])


def test_the_quantizer_leaves_widths_the_group_does_not_divide(stories):
    import copy

    model, _ = stories
    result = parse_variant("mlx:4:g64").apply(copy.deepcopy(model))
    assert result.proof.layers_skipped and all("down_proj" in n for n in result.proof.layers_skipped)  # 172 wide
    assert result.proof.max_levels <= 16 and result.settings["include_lm_head"]
