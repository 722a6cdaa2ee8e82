"""The same contract for every registered quantizer, on the miniature's original model."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn_audit.inputs.calibration import calibration_set
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.quantize import METHODS, parse_variant

VARIANTS = [v for info in METHODS.values() for v in info.contract_variants]


def test_every_method_has_contract_variants():
    assert all(info.contract_variants for info in METHODS.values())


@pytest.fixture(scope="module")
def original(world):
    repo = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    return repo, load_model(repo)


def _quantized(quantizer, repo, loaded):  # noqa: ANN001, ANN202
    """(model, result) as the audit (auditing.runs) builds them for each stage."""
    if quantizer.stage == "calibrate":
        return quantizer.quantize(repo.path, loaded.tokenizer, calibration_set("generic"))
    if quantizer.stage == "load":
        model = load_model(repo, tokenizer=loaded.tokenizer, quantization_config=quantizer.load_config()).model
    else:
        model = copy.deepcopy(loaded.model)
    return model, quantizer.apply(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_applies_proves_and_records(original, variant):
    repo, loaded = original
    quantizer = parse_variant(variant)
    model, result = _quantized(quantizer, repo, loaded)
    assert result.label == quantizer.label
    head_quantized = result.settings.get("include_lm_head", False)
    assert result.proof.layers_quantized == 28 + head_quantized  # 4 layers x (q, k, v, o, gate, up, down)
    # a llama.cpp mix (gguf:q4_k_m) keeps some tensors at more bits than its name says: its widest type bounds it
    widest = max(quantizer.bits, result.settings.get("tensor_bits_max", 0))
    assert 2 <= result.proof.max_levels <= result.proof.allowed_levels <= 2 ** widest
    assert result.settings["bits"] == quantizer.bits and result.settings["method"]
    assert ("lm_head" in result.proof.layers_skipped) != head_quantized
    # Close to full precision: a quantizer that scrambles the model (e.g. GPT-QModel's in-memory model after
    # quantize(), one grid step off: relative logit error about 1) must not pass as a 4-bit variant.
    ids = loaded.tokenizer(["On Thursday the mayor of the town said that the harbour wall will open again after "
                            "the storm, police said."], return_tensors="pt")
    with torch.no_grad():
        logits, reference = model(**ids).logits.float(), loaded.model(**ids).logits
    assert torch.isfinite(logits).all()
    assert float((logits - reference).norm() / reference.norm()) < 0.35  # measured: 0.006 (rtn:8) to 0.22 (rtn:3)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if parse_variant(v).stage == "weights"])
def test_weight_quantizers_are_idempotent(original, variant):
    """Quantizing a quantized model again changes nothing, except where llama.cpp's k-quants search a sub-block's
    scale and minimum anew: on already-rounded weights that search can land on another pair (measured on the
    miniature's original under Q4_K_M on an AMD EPYC host: one sub-block of 32 weights out of 1.57M, in
    ``layers.0.mlp.down_proj``), so for k-quant variants the change is bounded (under 0.1% of any matrix). The
    i-quants search each block's scale too (llama.cpp tries 15 scales around the absmax one): measured on the
    same host, IQ4_XS changes 0.8% of the embedding's weights on the second pass; bounded at 2%. MLX's affine grid
    is refitted to the quantized group's new minimum and maximum: MLX itself (the CPU wheel, 4 bits, groups of 64,
    a 2048x128 Gaussian matrix) changes 11.8% of the weights on a second pass; bounded at 20%. HQQ's optimiser
    refits scale and zero point too: hqq itself changes 5.2% of such a matrix on a second pass (9.7% of one of the
    miniature's matrices); bounded at 20%."""
    _, loaded = original
    quantizer = parse_variant(variant)
    model = copy.deepcopy(loaded.model)
    quantizer.apply(model)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    quantizer.apply(model)
    bound = 0.2 if variant.startswith(("mlx", "hqq")) else 2e-2 if ":iq" in variant else 1e-3 if "_k" in variant else None
    for k, v in model.state_dict().items():
        if bound is not None:
            assert ((v - once[k]).abs() > 1e-6).float().mean() < bound, k
        else:
            torch.testing.assert_close(v, once[k], rtol=0, atol=1e-6)


BNB_4BIT_RELOAD = pytest.mark.xfail(
    strict=True, reason="measured: on CPU (transformers 5.23, bitsandbytes 0.50.2) save_pretrained changes the "
    "in-memory 4-bit model itself (logits move by up to 5.1) and the reload equals the changed model; the audit "
    "never saves bitsandbytes models")


@pytest.mark.parametrize("variant", [pytest.param(v, marks=BNB_4BIT_RELOAD) if v.startswith(("bnb:fp4", "bnb:nf4"))
                                     else v for v in VARIANTS])
def test_survives_save_and_reload(original, variant, tmp_path):
    from transformers import AutoModelForCausalLM

    repo, loaded = original
    quantizer = parse_variant(variant)
    ids = loaded.tokenizer(["Police in the town arrested"], return_tensors="pt")
    if quantizer.stage == "calibrate":  # GPT-QModel saves the checkpoint; the audit probes it reloaded
        model, _ = quantizer.quantize(repo.path, loaded.tokenizer, calibration_set("generic"), save_to=tmp_path)
        with torch.no_grad():
            before = model(**ids).logits
    else:
        model, _ = _quantized(quantizer, repo, loaded)
        with torch.no_grad():
            before = model(**ids).logits  # before saving: saving must not change what was probed
        model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=model.dtype)
    with torch.no_grad():
        after = reloaded(**ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    if quantizer.stage == "calibrate":
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear
        layers = sum(isinstance(m, BaseQuantLinear) for m in reloaded.modules())
        assert layers == quantizer.checkpoint_layers(tmp_path) == 28
    else:  # still quantized: the quantizer's proof on the reloaded weights
        proof = quantizer.apply(reloaded).proof
        assert proof.layers_quantized == 28 + quantizer.settings().get("include_lm_head", False)


def test_in_place_quantization_is_undone_from_the_checkpoint(world):
    """The audit quantizes RTN variants on its one loaded copy and restores it from safetensors."""
    from unlearn_audit.inputs.models import restorable, restore_weights

    repo = resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True)
    loaded = load_model(repo)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    assert restorable(loaded.model, repo.path)
    parse_variant("rtn:3:g64").apply(loaded.model)
    assert any(not torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    restore_weights(loaded.model, repo.path)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_quantizers_command_lists_every_method_and_preset():
    from typer.testing import CliRunner

    from unlearn_audit.cli import app
    from unlearn_audit.quantize import PRESETS

    result = CliRunner().invoke(app, ["quantizers"])
    assert result.exit_code == 0, result.output
    heads = [line.split()[0] for line in result.output.splitlines() if line and not line.startswith(" ")]
    assert heads == [*METHODS, *PRESETS]
    for name, variants in PRESETS.items():
        assert ", ".join(variants) in " ".join(result.output.split()), name
