"""The same contract for every registered quantizer, on the miniature's original model."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn_audit.hub import resolve
from unlearn_audit.models import load_model
from unlearn_audit.quantize import METHODS, parse_variant

VARIANTS = [v for info in METHODS.values() for v in info.contract_variants]


def test_every_method_has_contract_variants():
    assert all(info.contract_variants for info in METHODS.values())


@pytest.fixture(scope="module")
def original(world):
    repo = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    return repo, load_model(repo)


def _quantized(quantizer, repo, loaded):  # noqa: ANN001, ANN202
    if quantizer.stage == "load":
        return load_model(repo, tokenizer=loaded.tokenizer, quantization_config=quantizer.load_config()).model
    model = copy.deepcopy(loaded.model)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_applies_proves_and_records(original, variant):
    repo, loaded = original
    quantizer = parse_variant(variant)
    model = _quantized(quantizer, repo, loaded)
    result = quantizer.apply(model)
    assert result.label == quantizer.label
    head_quantized = result.settings.get("include_lm_head", False)
    assert result.proof.layers_quantized == 28 + head_quantized  # 4 layers x (q, k, v, o, gate, up, down)
    assert 2 <= result.proof.max_levels <= result.proof.allowed_levels <= 2 ** quantizer.bits
    assert result.settings["bits"] == quantizer.bits and result.settings["method"]
    assert ("lm_head" in result.proof.layers_skipped) != head_quantized
    ids = loaded.tokenizer(["On Thursday the mayor of"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if parse_variant(v).stage == "weights"])
def test_weight_quantizers_are_idempotent(original, variant):
    _, loaded = original
    quantizer = parse_variant(variant)
    model = copy.deepcopy(loaded.model)
    quantizer.apply(model)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    quantizer.apply(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, once[k], rtol=0, atol=1e-6)


BNB_4BIT_RELOAD = pytest.mark.xfail(
    strict=True, reason="measured: on CPU (transformers 5.23, bitsandbytes 0.50.2) a 4-bit model reloaded after "
    "save_pretrained dequantizes to different weights; the audit never saves quantized models")


@pytest.mark.parametrize("variant", [pytest.param(v, marks=BNB_4BIT_RELOAD) if v.startswith(("bnb:fp4", "bnb:nf4"))
                                     else v for v in VARIANTS])
def test_survives_save_and_reload(original, variant, tmp_path):
    from transformers import AutoModelForCausalLM

    repo, loaded = original
    quantizer = parse_variant(variant)
    model = _quantized(quantizer, repo, loaded)
    quantizer.apply(model)
    ids = loaded.tokenizer(["Police in the town arrested"], return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    proof = quantizer.apply(reloaded).proof
    assert proof.layers_quantized == 28 + quantizer.settings().get("include_lm_head", False)  # still quantized
    with torch.no_grad():
        after = reloaded(**ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
