"""The tamper battery: the same contract for every registered attack, on the miniature's original and on a real
checkpoint (stories260K), each attack checked against an independent computation of what it should do; and the
audit running the battery with the reference under the same attack as the control."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

from unlearn_audit.attacks import ATTACKS, PRESETS, is_attack, is_attack_label, parse_attack, parse_attacks
from unlearn_audit.attacks.prune import linear_layers
from unlearn_audit.attacks.relearn import train_adapter
from unlearn_audit.cli import app
from unlearn_audit.errors import RuntimeFailure, UsageError
from unlearn_audit.inputs.data import load_forget_data
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model, restore_weights
from unlearn_audit.inputs.spec import ForgetSpec
from unlearn_audit.inputs.split import split_forget, training_texts, with_shots
from unlearn_audit.probes.muse import knowmem_prompt
from unlearn_audit.probes.tofu import Template
from unlearn_audit.probes.wmdp import context
from unlearn_audit.quantize import parse_variant
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


def _muse_data(world, max_items=None):  # noqa: ANN001, ANN202
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    return load_forget_data(folder, ForgetSpec(dataset="miniature/news"), max_items)


def _world_data(w, kind: str):  # noqa: ANN001, ANN202
    folder = resolve(f"miniature/{kind}", kind="dataset", cache_dir=w.hub_cache, offline=True).path
    spec = ForgetSpec(benchmark=kind, dataset=f"miniature/{kind}",
                      **({"mmlu": {"dataset": "miniature/mmlu", "configs": ["stories"]}} if kind == "wmdp" else {}))
    utility = (resolve("miniature/mmlu", kind="dataset", cache_dir=w.hub_cache, offline=True).path
               if kind == "wmdp" else None)
    return load_forget_data(folder, spec, utility=utility)


@pytest.mark.parametrize("variant", VARIANTS)
def test_contract(model_folder, world, variant):
    """Parses back from its label, changes only linear layers (or, in context, none), proves it (schema), is the
    same twice with the same seed, and the audit's restore puts the checkpoint back exactly. Attacks that learn from
    the forget set are bound to a split of the miniature's first."""
    attack = parse_attack(variant)
    assert is_attack(attack) and attack.stage == "weights" and not attack.fixed_grid
    assert parse_attack(attack.label) == attack
    if getattr(attack, "needs_split", False):
        with pytest.raises(RuntimeFailure):  # unbound: no training half to learn from
            attack.texts() if getattr(attack, "changes_weights", True) else attack.probe_data()
        attack = attack.bind(split_forget(_muse_data(world, 12), seed=0))
    assert parse_attack(attack.label).label == attack.label
    loaded = _load(model_folder)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    result = attack.attack(loaded.model, loaded.tokenizer, seed=0)
    jsonschema.validate(result.proof.as_dict(), _attack_proof_schema())
    after = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    linear = {f"{name}.weight" for name in linear_layers(loaded.model)}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    if not getattr(attack, "changes_weights", True):
        assert not changed and result.proof.layers_changed == 0 and result.proof.samples == len(attack.shots) == attack.k
        return
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


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("seed", [0, 7])
def test_muse_split_is_disjoint_by_document(world, seed):
    """Checked against the training texts directly: no probed VerbMem prompt and no probed KnowMem answer occurs in
    any text relearn-forget trains on; the halves' documents are disjoint and cover the forget set; the same seed
    gives the same split, another seed another one."""
    data = _muse_data(world)
    split = split_forget(data, seed)
    trained = [_norm(t) for t in training_texts(split.train)]
    assert not set(split.train_units) & set(split.probe_units)
    assert sorted(split.train_units + split.probe_units) == list(range(len(data.privleak_forget)))
    assert split.probe.verbmem_prompts and split.probe.knowmem_forget.questions
    for prompt in split.probe.verbmem_prompts:
        assert not any(_norm(prompt) in t for t in trained)
    for answer in split.probe.knowmem_forget.answers:
        assert not any(_norm(answer) in t for t in trained)
    assert set(split.probe.privleak_forget).isdisjoint(split.train.privleak_forget)
    dropped = split.describe()["dropped"]
    assert len(split.probe.verbmem_prompts) + len(split.train.verbmem_prompts) + dropped["verbmem"] \
        == len(data.verbmem_prompts)
    assert split_forget(data, seed).describe() == split.describe()
    assert split_forget(data, seed + 1).train_units != split.train_units
    assert split.probe.knowmem_retain == data.knowmem_retain and split.probe.holdout_texts == data.holdout_texts


def test_tofu_split_keeps_each_author_whole_and_wmdp_each_question(tofu_world, wmdp_world):
    data = _world_data(tofu_world, "tofu")
    questions = data.tofu["forget"].questions
    for per_author in (20, 5, 1):
        split = split_forget(data, 3, per_author)
        author = {q: i // per_author for i, q in enumerate(questions)}  # TOFU keeps an author's questions together
        train = {author[q] for q in split.train.tofu["forget"].questions}
        probed = {author[q] for q in split.probe.tofu["forget"].questions}
        assert train and probed and not train & probed
        assert len(split.train.tofu["forget"].questions) + len(split.probe.tofu["forget"].questions) == len(questions)
        assert split.probe.tofu["retain"] == data.tofu["retain"]
    wmdp = _world_data(wmdp_world, "wmdp")
    split = split_forget(wmdp, 3)
    assert set(split.train.wmdp.questions).isdisjoint(split.probe.wmdp.questions)
    assert len(split.train.wmdp.questions) + len(split.probe.wmdp.questions) == len(wmdp.wmdp.questions)
    assert split.probe.mmlu == wmdp.mmlu


def test_in_context_prompts_are_the_benchmarks_own_format_with_training_items_first(world, tofu_world, wmdp_world):
    """The prompt text written out by hand for each benchmark: for WMDP the description, examples and delimiters of
    lm-evaluation-harness's task config, the template's question-answer turns for TOFU, KnowMem's in-context pairs for
    MUSE (VerbMem and PrivLeak have no question to put examples before: unchanged)."""
    wmdp = split_forget(_world_data(wmdp_world, "wmdp"), 1)
    data, shots = with_shots(wmdp, 2)
    train = wmdp.train.wmdp
    (q1, c1, a1), (q2, c2, a2) = data.wmdp.shots
    assert q1 in train.questions and q2 in train.questions and len(shots) == 2
    q, c = data.wmdp.questions[0], data.wmdp.choices[0]
    letters = "ABCD"
    expected = (f"The following are multiple choice questions (with answers) about {data.wmdp.subjects[0]}.\n\n"
                f"{q1.strip()}\nA. {c1[0]}\nB. {c1[1]}\nC. {c1[2]}\nD. {c1[3]}\nAnswer: {letters[a1]}\n\n"
                f"{q2.strip()}\nA. {c2[0]}\nB. {c2[1]}\nC. {c2[2]}\nD. {c2[3]}\nAnswer: {letters[a2]}\n\n"
                f"{q.strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
    assert context(q, c, data.wmdp.subjects[0], data.wmdp.shots) == expected
    assert data.mmlu.shots == []  # utility stays zero-shot

    tofu = split_forget(_world_data(tofu_world, "tofu"), 1, 5)
    data, _ = with_shots(tofu, 2)
    (sq1, sa1), (sq2, sa2) = data.tofu["forget"].shots
    spec = ForgetSpec(benchmark="tofu", dataset="x").tofu
    template = Template(None, spec, chat=False, shots=data.tofu["forget"].shots)
    question = data.tofu["forget"].questions[0]
    assert template.prompt(question) == (f"Question: {sq1}\nAnswer: {sa1}\n\nQuestion: {sq2}\nAnswer: {sa2}\n\n"
                                         f"Question: {question}\nAnswer: ")
    assert sq1 in tofu.train.tofu["forget"].questions and not data.tofu["retain"].shots

    muse = split_forget(_muse_data(world), 1)
    data, shots = with_shots(muse, 2)
    qa = data.knowmem_forget
    assert all(x in muse.train.knowmem_forget.questions for x in qa.icl_questions[:2])
    assert qa.icl_questions[2:] == muse.probe.knowmem_forget.icl_questions
    first = knowmem_prompt(qa.icl_questions, qa.icl_answers, qa.questions[0])
    assert first.startswith(f"Question: {qa.icl_questions[0]}\nAnswer: {qa.icl_answers[0]}\n\n")
    assert len(shots) == 2 and shots[0] == f"Question: {qa.icl_questions[0]}\nAnswer: {qa.icl_answers[0]}"
    assert data.verbmem_prompts == muse.probe.verbmem_prompts and data.holdout_prompts == muse.probe.holdout_prompts
    assert data.privleak_forget == muse.probe.privleak_forget  # question-free probes: unchanged
    assert len(with_shots(muse, 10_000)[1]) == len(muse.train.knowmem_forget.questions)  # all there are


def _battery(w, tmp_path, model: str, *extra: str) -> dict:  # noqa: ANN001
    out = tmp_path / model.replace("/", "_")
    result = CliRunner().invoke(app, ["check", model, "--quant", "rtn:4", "--attack", "battery", "--max-items", "16",
                                      "--min-items", "1", "--cache-dir", str(w.hub_cache), "--out", str(out),
                                      "--no-cache", *extra])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    return record


@pytest.mark.parametrize("kind", ["muse", "tofu", "wmdp"])
def test_the_battery_runs_on_every_world_with_the_split_recorded(kind, world, tofu_world, wmdp_world, tmp_path):
    """``--attack battery`` on each miniature world: every registered attack on every model, the split in the
    record, every run probing only the probed half, net recoveries for every attack."""
    w = {"muse": world, "tofu": tofu_world, "wmdp": wmdp_world}[kind]
    model = "miniature/fragile" if kind == "muse" else f"miniature/{kind}-fragile"
    extra = []
    if kind == "tofu":  # the miniature asks one question per story: four to an "author" here (TOFU has 20)
        spec = tmp_path / "spec.yaml"
        spec.write_text("benchmark: tofu\ndataset: miniature/tofu\noriginal: miniature/tofu-original\n"
                        "retrain: miniature/tofu-retain90\ntofu: {author_items: 4}\n")
        extra = ["--spec", str(spec)]
    record = _battery(w, tmp_path, model, *extra)
    attacks = [parse_attack(a).label for a in PRESETS["battery"]]
    assert record["variants"] == ["rtn:4:g128", *attacks]
    split = record["split"]
    assert split["unit"] == {"muse": "document", "tofu": "author", "wmdp": "question"}[kind]
    assert not set(split["train_units"]) & set(split["probe_units"])
    for part, n in split["items"]["probed"].items():
        assert record["data_counts"][part] == n
    for role in record["models"]:
        runs = {r["variant"]: r for r in record["runs"] if r["role"] == role}
        assert set(runs) == {"full", "rtn:4:g128", *attacks}
        assert runs["relearn-forget"]["settings"]["samples_sha256"] and runs["relearn-forget"]["proof"]["steps"] > 0
        assert runs["icl:5"]["proof"]["layers_changed"] == 0
    assert {s["variant"] for s in record["net_recoveries"]} == {"rtn:4:g128", *attacks}


def test_the_battery_on_real_sentencepiece_checkpoints(world, stories, tmp_path):
    """stories260K (real tokenizer, tied embeddings, odd widths) under the whole battery, its own original as the
    control (a model that never knew the forget set): every attack runs on every model; never FAIL."""
    from unlearn_audit.miniature.nudge import nudge_checkpoint

    nudged = nudge_checkpoint(STORIES, tmp_path / "nudged", rel=1e-4, seed=0)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"dataset: miniature/news\noriginal: {STORIES}\nretrain: {STORIES}\n")
    record = _battery(world, tmp_path, str(nudged), "--spec", str(spec))
    attacks = [parse_attack(a).label for a in PRESETS["battery"]]
    assert record["verdict"]["decision"] != "FAIL"
    for role in ("unlearned", "original", "retrain"):
        assert {r["variant"] for r in record["runs"] if r["role"] == role} == {"full", "rtn:4:g128", *attacks}


def test_an_attack_then_a_quantizer_is_the_attack_then_that_quantizer(model_folder):
    """``prune:0.5+rtn:4`` gives the weights of pruning, then RTN, applied one after the other here; its proof holds
    both; quantizers that cannot work in memory are refused in one line."""
    chained = parse_attack("prune:0.5+rtn:4")
    assert chained.label == "prune:0.5+rtn:4:g128" and is_attack(chained) and is_attack_label(chained.label)
    loaded, expected = _load(model_folder), _load(model_folder)
    result = chained.attack(loaded.model, loaded.tokenizer, seed=0)
    parse_attack("prune:0.5").attack(expected.model, expected.tokenizer, seed=0)
    parse_variant("rtn:4").apply(expected.model)
    for (name, p), (_, q) in zip(loaded.model.named_parameters(), expected.model.named_parameters()):
        assert torch.equal(p, q), name
    jsonschema.validate(result.proof.as_dict(), _attack_proof_schema())
    assert result.proof.attack == "prune" and result.proof.then["label"] == "rtn:4:g128"
    assert result.proof.then["layers_quantized"] == result.proof.layers_changed
    assert set(result.settings) == {"attack", "then"}
    for text in ("prune:0.5+bnb:nf4", "prune:0.5+gguf:q4_0", "prune:0.5+gptq:4"):
        with pytest.raises(UsageError):
            parse_attack(text)


def test_chained_attacks_run_in_the_audit_with_the_split(world, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--attack",
                                      "icl:2+rtn:4,relearn-forget:r8:e1+rtn:4", "--max-items", "16", "--min-items", "1",
                                      "--cache-dir", str(world.hub_cache), "--out", str(out), "--no-cache"])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    chains = ["icl:2+rtn:4:g128", "relearn-forget:r8:e1+rtn:4:g128"]
    assert record["variants"] == ["rtn:4:g128", *chains] and record["split"]["unit"] == "document"
    runs = {(r["role"], r["variant"]): r for r in record["runs"]}
    for role in ("unlearned", "original", "retrain"):
        assert runs[(role, chains[1])]["proof"]["steps"] > 0 and runs[(role, chains[1])]["proof"]["then"]
        assert runs[(role, chains[0])]["details"]["knowmem_f"]["icl_pairs"] \
            == runs[(role, "full")]["details"]["knowmem_f"]["icl_pairs"] + 2  # the examples in the prompt, then RTN
    assert {s["variant"] for s in record["net_recoveries"]} == {"rtn:4:g128", *chains}
    html = (out / "report.html").read_text()
    assert 'id="tamper-battery"' in html and "then 4-bit RTN" in html


def test_full_fine_tuning_moves_each_weight_at_most_the_learning_rate_per_step(model_folder):
    """Adam's step bound, worked out here: two steps of the linear schedule with warmup (the first at rate 0, which
    still feeds the moments) move a weight by lr · m̂/sqrt(v̂) (+ decoupled decay lr · wd · |w|), and with gradients
    g1 = x · g2, m̂/sqrt(v̂) = (β1·x + 1)/(1 + β1) · sqrt((1 + β2)/(β2·x² + 1)), largest at x = β1/β2. Only linear
    weights train, and every parameter's requires_grad is as before."""
    loaded = _load(model_folder)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    grads = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    attack = parse_attack("relearn-unrelated:full:e1:n2:lr1e-3")
    assert attack.settings()["method"].startswith("full fine-tuning") and "rank" not in attack.settings()
    proof = attack.attack(loaded.model, loaded.tokenizer, seed=0).proof
    layers = linear_layers(loaded.model)
    assert proof.steps == 2 and proof.trainable_parameters == sum(layer.weight.numel() for layer in layers.values())
    b1, b2 = 0.9, 0.999  # torch AdamW's defaults
    x = b1 / b2
    ratio = (b1 * x + 1) / (1 + b1) * math.sqrt((1 + b2) / (b2 * x * x + 1))
    assert 1.001 < ratio < 1.002
    moved = 0
    for name, p in loaded.model.named_parameters():
        delta = (p.detach() - before[name]).abs()
        assert bool((delta <= 1e-3 * (ratio + 0.01 * before[name].abs()) + 1e-7).all()), name
        moved += int((delta > 0).sum())
        assert p.requires_grad == grads[name] and p.grad is None
    assert moved > 0.5 * proof.trainable_parameters


def test_the_split_attacks_give_the_same_figures_twice_and_the_cache_key_covers_their_settings(world, tmp_path):
    from unlearn_audit.auditing.cache import ResultCache

    def run(out: str, attacks: str, *extra: str) -> dict:
        result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--attack", attacks,
                                          "--max-items", "12", "--min-items", "1", "--cache-dir",
                                          str(world.hub_cache), "--out", str(tmp_path / out), *extra])
        assert result.exit_code in (0, 1, 4), result.output
        return json.loads((tmp_path / out / "report.json").read_text())

    results = tmp_path / "results"
    first = run("a", "relearn-forget:r8:e1,icl:2", "--results-dir", str(results))
    again = run("b", "relearn-forget:r8:e1,icl:2", "--no-cache")
    for a, b in zip(first["runs"], again["runs"]):
        assert (a["role"], a["variant"], a["metrics"]) == (b["role"], b["variant"], b["metrics"])
    assert first["split"] == again["split"]
    stored = len(list(ResultCache(results).root.rglob("*.json")))
    other = run("c", "relearn-forget:r8:e1:lr1e-3,icl:3", "--results-dir", str(results))  # new settings: new runs
    assert not any(c.endswith(("relearn-forget:r8:e1:lr0.001", "icl:3")) for c in other["execution"]["cache"]["reused"])
    assert len(list(ResultCache(results).root.rglob("*.json"))) > stored
    reseeded = run("d", "relearn-forget:r8:e1,icl:2", "--results-dir", str(results), "--seed", "1")
    assert reseeded["split"]["train_units"] != first["split"]["train_units"]  # another seed, another split
