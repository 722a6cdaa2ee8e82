"""A LoRA adapter of the miniature, audited end to end as users run it: merged into its base (peft)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.inputs.hub import resolve

runner = CliRunner()


def build_adapter(world, dest: Path, *, scale: float = 0.05, seed: int = 0) -> Path:
    """A LoRA adapter (r=4 on the attention and MLP projections) with seeded random weights, saved with
    the base named as a Hub id of the miniature's cache and the base's tokenizer files beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * scale)
    peft_model.save_pretrained(dest)
    settings = json.loads((dest / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "miniature/original"
    (dest / "adapter_config.json").write_text(json.dumps(settings))
    for item in base.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(item, dest / item.name)
    return dest


@pytest.fixture(scope="module")
def adapter(world, tmp_path_factory):
    return build_adapter(world, tmp_path_factory.mktemp("lora") / "adapter")


def test_lora_adapter_is_audited_merged_into_its_base(world, adapter, tmp_path):
    result = runner.invoke(app, ["check", str(adapter), "--forget", "miniature/news", "--quant", "rtn:4",
                                 "--max-items", "4", "--min-items", "1", "--cache-dir", str(world.hub_cache),
                                 "--out", str(tmp_path), "--format", "json,md,html"])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((tmp_path / "report.json").read_text())
    unlearned = record["models"]["unlearned"]
    assert unlearned["adapter"]["base"]["reference"] == "miniature/original"
    assert unlearned["adapter"]["peft_type"] == "LORA"
    assert record["models"]["original"]["found_by"] == "the adapter's base model (adapter_config.json)"
    assert record["models"]["original"]["repo"]["reference"] == "miniature/original"
    assert any("LORA adapter" in note for note in record["notes"])
    # the merged model really differs from its base: the diagnostic sees the LoRA update
    assert record["weight_diff"]["overall"]["rtn:4:g128"]["moved"] > 0.1
    full = {r["role"]: r for r in record["runs"] if r["variant"] == "full"}
    scores = {role: [i["score"] for i in run["items"]["privleak"]] for role, run in full.items()}
    assert scores["unlearned"] != scores["original"]  # the merged model is what was probed


def test_merged_weights_equal_base_plus_lora(world, adapter):
    """The merged checkpoint is base + (alpha / r) * B @ A, computed here by hand from the adapter file."""
    from safetensors.torch import load_file

    from unlearn_audit.inputs.adapters import merge_adapter
    from unlearn_audit.support.home import home

    base = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    merged = merge_adapter(resolve(str(adapter)), base, home() / "merged", trust_remote_code=False)
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    original = load_file(str(next(base.path.glob("*.safetensors"))))[name]
    got = load_file(str(next(merged.folder.glob("*.safetensors"))))[name]
    torch.testing.assert_close(got, original + (8 / 4) * b @ a, rtol=1e-5, atol=1e-6)


def test_pickled_adapter_is_refused_unless_allowed(world, adapter, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    torch.save(load_file(str(pickled / "adapter_model.safetensors")), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    result = runner.invoke(app, ["check", str(pickled), "--forget", "miniature/news", "--cache-dir",
                                 str(world.hub_cache), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "pickled adapter weights" in result.output
