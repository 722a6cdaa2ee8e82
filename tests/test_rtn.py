"""RTN against small tensors quantized by hand, the proof of quantization, and the variant syntax."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearn_audit.errors import InputError, QuantizationError, UsageError
from unlearn_audit.quantize import parse_variant, parse_variants
from unlearn_audit.quantize.base import QuantProof, count_levels_per_group, verify_proof
from unlearn_audit.quantize.rtn import RTNQuantizer, rtn_fake_quantize


def test_asymmetric_2bit_by_hand():
    # min 0, max 1.5 -> scale 1.5/3 = 0.5, zero round(0/0.5) = 0
    # w/scale = 0, .2, .4, .6, .8, 1, 1.2, 3 -> round = 0 0 0 1 1 1 1 3 -> x0.5
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.5]])
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.5]])
    torch.testing.assert_close(rtn_fake_quantize(w, bits=2, group_size=8), expected)


def test_asymmetric_zero_point_by_hand():
    # min -1, max 0.5 -> scale 0.5, zero = round(1/0.5) = 2
    # q = round(w/0.5) + 2 = round(-2)+2=0, round(-0.4)+2=2, round(0.2)+2=2, round(1)+2=3 -> (q-2)*0.5
    w = torch.tensor([[-1.0, -0.2, 0.1, 0.5]])
    torch.testing.assert_close(rtn_fake_quantize(w, 2, 4), torch.tensor([[-1.0, 0.0, 0.0, 0.5]]))


def test_groups_are_independent_by_hand():
    # two groups of 2, 1 bit: group [0, 1] -> scale 1, zero 0; group [20, 40] -> scale 20,
    # zero round(-1) = -1, codes round(1)-1 = 0 and round(2)-1 = 1 -> (0+1)*20, (1+1)*20
    w = torch.tensor([[0.0, 1.0, 20.0, 40.0]])
    torch.testing.assert_close(rtn_fake_quantize(w, 1, 2), w)
    w = torch.tensor([[0.0, 0.4, 0.6, 1.0]])  # one group, 1 bit: scale 1, zero 0 -> 0, 0, 1, 1
    torch.testing.assert_close(rtn_fake_quantize(w, 1, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_symmetric_3bit_by_hand():
    # absmax 1.5, qmax 3 -> scale 0.5; q = clamp(round(w/0.5), -4, 3)
    # w/scale = -3, -0.6, 0.5, 2.4, 3 -> round (half to even) -3, -1, 0, 2, 3
    w = torch.tensor([[-1.5, -0.3, 0.25, 1.2, 1.5]])
    out = rtn_fake_quantize(w, 3, 5, symmetric=True)
    torch.testing.assert_close(out, torch.tensor([[-1.5, -0.5, 0.0, 1.0, 1.5]]))


def test_constant_group_is_kept():
    for value in (0.7, -0.3, 0.0):
        w = torch.full((2, 4), value)
        torch.testing.assert_close(rtn_fake_quantize(w, 4, 4), w)


def test_min_off_grid_costs_at_most_half_a_step():
    # group [10, 30], 1 bit: scale 20, zero round(-0.5) = 0 (half to even); 10 -> code round(0.5) = 0 -> 0.0
    w = torch.tensor([[10.0, 30.0]])
    torch.testing.assert_close(rtn_fake_quantize(w, 1, 2), torch.tensor([[0.0, 20.0]]))


def test_last_group_is_shorter_by_hand():
    # 6 inputs, groups of 4 (GPTQ's rule: column // 4): [0, 1, 2, 3] and the short group [10, 40].
    # 1 bit: group 1 scale 3, zero 0: 0,1 -> 0 and 2,3 -> round(.67), round(1) = 1 -> 0, 0, 3, 3.
    # Group 2 (short): scale 30, zero round(-10/30) = 0: 10 -> round(.33) = 0 -> 0; 40 -> round(1.33) = 1 -> 30.
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0, 10.0, 40.0]])
    torch.testing.assert_close(rtn_fake_quantize(w, 1, 4), torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.0, 30.0]]))
    # a layer narrower than the group is one group per row
    w = torch.tensor([[0.0, 0.5, 1.0]])
    torch.testing.assert_close(rtn_fake_quantize(w, 1, 128), torch.tensor([[0.0, 0.0, 1.0]]))


def test_real_widths_quantize_and_are_proved():
    # SmolLM2's 576 and stories260K's 172 with the default group of 128: groups 128x4 + 64, 128 + 44
    for width in (576, 172, 64):
        layer = nn.Linear(width, 3, bias=False)
        torch.nn.init.normal_(layer.weight)
        model = nn.Sequential(layer)
        result = RTNQuantizer(bits=4, group_size=128).apply(model)
        assert result.proof.max_levels <= 16
        expected_groups = 3 * -(-width // 128)
        assert result.proof.groups_checked == expected_groups
        assert result.proof.short_groups == (3 if width % 128 else 0)
        assert count_levels_per_group(layer.weight, 128) <= 16


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.lm_head = nn.Linear(8, 32, bias=False)


def test_quantizer_applies_to_linears_but_not_lm_head_and_proves_it():
    model = Tiny()
    head = model.lm_head.weight.clone()
    result = RTNQuantizer(bits=3, group_size=8).apply(model)
    assert result.proof.layers_quantized == 2
    assert result.proof.layers_skipped == ["lm_head"]
    assert result.proof.max_levels <= 8 == result.proof.allowed_levels
    assert count_levels_per_group(model.up.weight, 8) <= 8
    torch.testing.assert_close(model.lm_head.weight, head)
    assert result.settings["bits"] == 3 and result.settings["scheme"] == "asymmetric-minmax"


def test_quantizer_is_idempotent_on_its_own_output():
    model = Tiny()
    RTNQuantizer(bits=4, group_size=8).apply(model)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    RTNQuantizer(bits=4, group_size=8).apply(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, once[k], rtol=0, atol=1e-6)


def test_group_wider_than_a_layer_is_one_group_per_row():
    model = Tiny()  # up has 8 inputs, down 16: with groups of 16, up is one short group per row
    result = RTNQuantizer(bits=2, group_size=16).apply(model)
    assert result.proof.short_groups == 16  # up's 16 rows
    assert count_levels_per_group(model.up.weight, 8) <= 4


def test_proof_fails_loudly():
    with pytest.raises(QuantizationError, match="no linear layer"):
        verify_proof("x", QuantProof(0, [], 0, 0, 16))
    with pytest.raises(QuantizationError, match="more than"):
        verify_proof("x", QuantProof(3, [], 10, 17, 16))


def test_variant_syntax():
    q = parse_variant("rtn:3:g64:sym:head")
    assert (q.bits, q.group_size, q.symmetric, q.include_lm_head) == (3, 64, True, True)
    assert q.label == "rtn:3:g64:sym:head"
    assert [v.label for v in parse_variants(["rtn:8,rtn:4", "rtn:2:g32"])] == ["rtn:8:g128", "rtn:4:g128", "rtn:2:g32"]
    for bad, msg in [("gptqq:4", "unknown quantization method"), ("rtn", "names no bit width"),
                     ("rtn:4:zz", "unknown RTN option"), ("rtn:9", "not supported")]:
        with pytest.raises((UsageError, InputError), match=msg):
            parse_variant(bad)
    with pytest.raises(UsageError, match="given twice"):
        parse_variants(["rtn:4", "rtn:4:g128"])


def test_cell_constraint_keeps_every_4bit_code():
    """The fragile checkpoint's property, checked independently: after any update projected by
    CellConstraint, 4-bit RTN of the model equals 4-bit RTN of the starting model exactly."""
    from unlearn_audit.miniature.train import CellConstraint

    model = Tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    constraint = CellConstraint.around(model, bits=4, group_size=8)
    with torch.no_grad():
        for p in (model.up.weight, model.down.weight):
            p.add_(torch.randn_like(p) * 0.5)  # far bigger than a cell
    constraint.project(model)
    moved = (model.up.weight - start["up.weight"]).abs().max().item()
    assert moved > 0  # the projection leaves room to move
    for name in ("up.weight", "down.weight"):
        q_start = rtn_fake_quantize(start[name], 4, 8)
        q_now = rtn_fake_quantize(model.state_dict()[name], 4, 8)
        assert torch.equal(q_start, q_now), name
