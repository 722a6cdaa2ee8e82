"""HQQ (unlearn_audit.quantize.hqq) against the hqq package called directly, on stories260K (odd widths: a group of 64
straddles two rows of a 172-wide matrix, as HQQ groups the flattened matrix) and the miniature's quantizer proof."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn_audit.quantize import parse_variant

Quantizer = pytest.importorskip("hqq.core.quantize", reason="needs the hqq extra").Quantizer


def test_the_variant_equals_hqqs_own_quantize_and_dequantize(stories):
    model, _ = stories
    quantized = copy.deepcopy(model)
    result = parse_variant("hqq:4:g64").apply(quantized)
    assert result.proof.layers_quantized == sum(isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
                                                for n, m in model.named_modules())
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        w = module.weight.detach().float()
        codes, meta = Quantizer.quantize(w, nbits=4, channel_wise=True, group_size=64, optimize=True, round_zero=True,
                                         axis=1, bitpack=False, compute_dtype=torch.float32, device="cpu")
        meta["compute_dtype"] = torch.float32
        theirs = Quantizer.dequantize(codes, meta)
        ours = dict(quantized.named_modules())[name].weight.detach()
        assert torch.equal(ours, theirs.to(ours.dtype)), name
        grid = parse_variant("hqq:4:g64").fit_grid(w)  # diff's grid: HQQ's own codes and values
        assert torch.equal(grid.codes(w), codes.reshape(w.shape).float()), name
        assert torch.equal(grid.dequantize(grid.codes(w)), theirs.reshape(w.shape)), name


def test_a_size_that_is_no_whole_number_of_groups_is_refused():
    from unlearn_audit.errors import InputError

    with pytest.raises(InputError, match="not a whole number of HQQ groups"):
        parse_variant("hqq:4:g64").fit_grid(torch.randn(3, 20))
    with pytest.raises(Exception, match="multiple of 8"):
        parse_variant("hqq:4:g60")
