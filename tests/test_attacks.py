"""The tamper battery: the same contract for every registered attack, on the miniature's original and on a real
checkpoint (stories260K), each attack checked against an independent computation of what it should do; and the
audit running the battery with the reference under the same attack as the control."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

from unlearn_audit.attacks import ATTACKS, PRESETS, is_attack, parse_attack, parse_attacks
from unlearn_audit.attacks.prune import linear_layers
from unlearn_audit.attacks.relearn import train_adapter
from unlearn_audit.cli import app
from unlearn_audit.errors import UsageError
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model, restore_weights
from unlearn_audit.report.record import SCHEMA_PATH

STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"
VARIANTS = [v for info in ATTACKS.values() for v in info.contract_variants]


def test_every_attack_has_contract_variants_and_the_battery_names_them_all():
    assert all(info.contract_variants for info in ATTACKS.values())
    assert {parse_attack(name).label.split(":")[0] for name in PRESETS["battery"]} == set(ATTACKS)


@pytest.mark.parametrize("text", ["prune", "prune:1.5", "prune:x", "relearn-unrelated:q3", "relearn-unrelated:r0",
                                  "shake:3", "relearn-unrelated:n999"])
def test_bad_attack_items_are_one_line_usage_errors(text):
    with pytest.raises(UsageError):
        attack = parse_attack(text)
        if text == "prune":  # the default fraction is fine; nothing else here is
            raise UsageError("ok", "ok")
        attack.settings()


def test_duplicates_are_refused():
    with pytest.raises(UsageError):
        parse_attacks(["prune:0.2,battery"])


@pytest.fixture(scope="module", params=["miniature", "stories260K"])
def model_folder(request, world):
    if request.param == "stories260K":
        return STORIES
    return resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path


def _load(folder):  # noqa: ANN001, ANN202
    return load_model(resolve(str(folder), offline=True))


def _attack_proof_schema() -> dict:
    schema = json.loads(SCHEMA_PATH.read_text())
    return schema["$defs"]["run"]["properties"]["proof"]["oneOf"][2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_contract(model_folder, variant):
    """Parses back from its label, changes only linear layers, proves it (schema), is the same twice with the same
    seed, and the audit's restore puts the checkpoint back exactly."""
    attack = parse_attack(variant)
    assert is_attack(attack) and attack.stage == "weights" and not attack.fixed_grid
    assert parse_attack(attack.label).settings() == attack.settings()
    loaded = _load(model_folder)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    result = attack.attack(loaded.model, loaded.tokenizer, seed=0)
    jsonschema.validate(result.proof.as_dict(), _attack_proof_schema())
    after = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    linear = {f"{name}.weight" for name in linear_layers(loaded.model)}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= linear, changed - linear
    assert result.proof.layers_changed == len(linear)
    again = _load(model_folder)
    attack.attack(again.model, again.tokenizer, seed=0)
    assert all(torch.equal(after[n], p) for n, p in again.model.named_parameters())
    restore_weights(loaded.model, model_folder)
    assert all(torch.equal(before[n], p) for n, p in loaded.model.named_parameters())


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_pruning_zeroes_the_smallest_share_of_each_layer(model_folder, fraction):
    """Counted independently: per layer, exactly round(f·n) weights are zero, and every one pruned was no larger in
    magnitude than every one kept."""
    loaded = _load(model_folder)
    original = {name: layer.weight.detach().clone() for name, layer in linear_layers(loaded.model).items()}
    proof = parse_attack(f"prune:{fraction}").attack(loaded.model, loaded.tokenizer, seed=0).proof
    for name, layer in linear_layers(loaded.model).items():
        w, w0 = layer.weight.detach(), original[name]
        pruned = (w == 0) & (w0 != 0)
        assert int((w == 0).sum()) == round(fraction * w.numel())
        assert float(w0[pruned].abs().max()) <= float(w0[w != 0].abs().min())
        assert torch.equal(w[w != 0], w0[w != 0])  # the rest untouched
        assert proof.zero_share[name] == pytest.approx(round(fraction * w.numel()) / w.numel())


def test_relearning_merges_as_base_plus_scaled_b_times_a(model_folder):
    """The merged weights equal W + (alpha / r) · B · A, computed here from the trained adapter's own A and B."""
    loaded = _load(model_folder)
    base = {name: layer.weight.detach().clone() for name, layer in linear_layers(loaded.model).items()}
    adapted, stats = train_adapter(loaded.model, loaded.tokenizer, ["Once upon a time there was a cat.",
                                                                     "The sun was warm and the sky was blue."],
                                   rank=4, alpha=16, lr=1e-2, epochs=2, weight_decay=0.01, warmup_ratio=0.05, seed=3)
    expected = {}
    for name, module in adapted.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            short = name.split("base_model.model.", 1)[1]
            a, b = module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()
            expected[short] = base[short] + (16 / 4) * (b @ a)
    assert set(expected) == set(base) and stats["steps"] == 4
    merged = adapted.merge_and_unload()
    assert merged is loaded.model
    for name, layer in linear_layers(merged).items():
        torch.testing.assert_close(layer.weight.detach(), expected[name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(layer.weight.detach(), base[name])


def test_relearning_depends_on_the_seed(world):
    folder = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path
    attack = parse_attack("relearn-unrelated:r8:e1:n2")
    weights = []
    for seed in (0, 1):
        loaded = _load(folder)
        attack.attack(loaded.model, loaded.tokenizer, seed=seed)
        weights.append(next(iter(linear_layers(loaded.model).values())).weight.detach().clone())
    assert not torch.equal(*weights)


def _check(world, tmp_path, model: str, *extra: str) -> dict:
    out = tmp_path / model.replace("/", "_")
    result = CliRunner().invoke(app, ["check", model, "--quant", "rtn:4", "--attack", "prune:0.5,relearn-unrelated:r8:e1:n2",
                                      "--max-items", "6", "--min-items", "1", "--cache-dir", str(world.hub_cache),
                                      "--out", str(out), *extra])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    return record


def test_the_audit_runs_every_attack_on_every_model_and_judges_net_of_the_reference(world, tmp_path):
    record = _check(world, tmp_path, "miniature/fragile", "--no-cache")
    labels = ["rtn:4:g128", "prune:0.5", "relearn-unrelated:r8:e1:n2"]
    assert record["variants"] == labels and record["config"]["attack"] == ["prune:0.5", "relearn-unrelated:r8:e1:n2"]
    for role in ("unlearned", "original", "retrain"):
        runs = {r["variant"]: r for r in record["runs"] if r["role"] == role}
        assert set(runs) == {"full", *labels}
        assert runs["relearn-unrelated:r8:e1:n2"]["proof"]["steps"] == 2
        assert runs["prune:0.5"]["proof"]["attack"] == "prune"
    net = {(s["metric"], s["variant"]) for s in record["net_recoveries"]}
    assert {("verbmem_f", "prune:0.5"), ("verbmem_f", "relearn-unrelated:r8:e1:n2")} <= net
    assert "weight_diff" in record and "prune:0.5" not in (record["weight_diff"] or {}).get("overall", {})
    again = _check(world, tmp_path / "again", "miniature/fragile", "--no-cache")
    for a, b in zip(record["runs"], again["runs"]):
        assert (a["role"], a["variant"], a["metrics"]) == (b["role"], b["variant"], b["metrics"])


def test_a_model_that_never_knew_the_forget_set_is_never_fail_under_attack(world, tmp_path):
    record = _check(world, tmp_path, "miniature/retrain", "--forget", "miniature/news", "--original",
                    "miniature/original", "--no-cache")
    assert record["verdict"]["decision"] != "FAIL", record["verdict"]["headline"]


def test_without_a_reference_model_attacks_are_reported_not_judged(world, tmp_path):
    """No retrained or reference model to attack the same way: the attacks' recoveries are reported, with the
    reason, and cannot make the verdict (quantization variants are still judged)."""
    record = _check(world, tmp_path, "miniature/fragile", "--forget", "miniature/news", "--original",
                    "miniature/original", "--no-cache")
    assert not record["net_recoveries"] and record["reference"]["source"] in ("default", "published")
    statuses = {(s["metric"], s["variant"]): s["status"] for s in record["recoveries"]}
    attacked = {k: v for k, v in statuses.items() if k[1] != "rtn:4:g128" and k[0] in record["thresholds"]["judged"]}
    assert attacked and set(attacked.values()) <= {"reported", "not-judged", "too-few-items"}
    assert "reported" in attacked.values()
    assert any("attacks are reported, not judged" in r for r in record["verdict"]["reasons"])
    assert any(s == "exceeds" for (m, v), s in statuses.items() if v == "rtn:4:g128")  # RTN still judged
