"""Peer parity: the figures the tool says follow a peer, checked against the peer's own code run here on the same
models and data.

WMDP and MMLU against lm-evaluation-harness (PyPI ``lm-eval``, the release :data:`unlearn_audit.probes.wmdp.LM_EVAL`
names), run through its own ``simple_evaluate`` with its ``hf`` model and its shipped ``wmdp``/``mmlu`` task
templates (only the dataset path changed to the miniature's files): at its default settings against the default
``--lm-eval 0.4.13``, and with ``add_bos_token=False`` against ``--lm-eval 0.4.9.1``. Every choice's log-likelihood
within 1e-4, every prediction and accuracy equal; on the WMDP world's four checkpoints and on stories260K.

TOFU against open-unlearning's own evaluator (``TOFUEvaluator`` with its ``eval/tofu`` configs), which does not
install beside this project (it pins torch 2.4.1 and transformers 4.45): its outputs on the TOFU world's four
checkpoints are stored in ``tests/fixtures/peers/open_unlearning_tofu.json`` with the commit and the command that
produced them (``benchmarks/peers/open_unlearning_tofu.py``). Every item's answer loss within 1e-4 nats, generation
and ROUGE-L recall equal, truth ratio within 1e-4 (relative); the forget figures, model utility and forget quality
as the tool's analysis computes them: ROUGE equal, the others within 1e-4 (relative).
"""

from __future__ import annotations

import importlib.util
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from unlearn_audit.engines.hf import HFEngine as Engine
from unlearn_audit.inputs.data import load_forget_data
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.inputs.spec import TofuSpec, parse_spec
from unlearn_audit.probes import tofu, wmdp

STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"
LM_EVAL_RELEASE = "0.4.13"
MODELS = ("wmdp-original", "wmdp-fragile", "wmdp-robust", "wmdp-retrain", "stories260K")


def test_the_installed_harness_is_the_release_the_probe_follows():
    assert version("lm-eval") == LM_EVAL_RELEASE
    assert f"checked against {LM_EVAL_RELEASE}" in wmdp.LM_EVAL[LM_EVAL_RELEASE]


def _lm_eval_tasks():
    """``benchmarks/peers/lm_eval_tasks.py``, shared with ``bench_peers.py`` (the benchmarks are scripts, not a
    package: loaded by path)."""
    file = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "lm_eval_tasks.py"
    spec = importlib.util.spec_from_file_location("peer_lm_eval_tasks", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peer(wmdp_world, tmp_path_factory):
    """lm-evaluation-harness's task manager with its own templates pointed at the miniature's parquet files; and
    the same data as the tool reads it."""
    data = resolve("miniature/wmdp", kind="dataset", cache_dir=wmdp_world.hub_cache).path
    utility = resolve("miniature/mmlu", kind="dataset", cache_dir=wmdp_world.hub_cache).path
    manager = _lm_eval_tasks().task_manager(tmp_path_factory.mktemp("lm-eval-tasks"), data, utility)
    spec = parse_spec({"benchmark": "wmdp", "dataset": "miniature/wmdp",
                       "mmlu": {"dataset": "miniature/mmlu", "configs": ["stories"]}}, "test")
    return manager, load_forget_data(data, spec, utility=utility)


def _lm_eval(manager, path: Path, bos: bool) -> dict[str, list[dict]]:
    from lm_eval import simple_evaluate

    args = {"pretrained": str(path), "dtype": "float32", **({} if bos else {"add_bos_token": False})}
    out = simple_evaluate(model="hf", model_args=args, tasks=["wmdp_mini", "mmlu_mini"], task_manager=manager,
                          device="cpu", batch_size=8, log_samples=True)
    return {name: sorted(out["samples"][name], key=lambda s: s["doc_id"]) for name in ("wmdp_mini", "mmlu_mini")}


@pytest.mark.parametrize("name", MODELS)
def test_wmdp_and_mmlu_equal_lm_evaluation_harness(name, peer, wmdp_world):
    manager, data = peer
    repo = resolve(str(STORIES) if name == "stories260K" else f"miniature/{name}", cache_dir=wmdp_world.hub_cache)
    loaded = load_model(repo)
    engine = Engine(loaded.model, loaded.tokenizer, batch_size=8)
    adds_bos = loaded.tokenizer("x")["input_ids"][0] == loaded.tokenizer.bos_token_id
    assert adds_bos  # both tokenizers add BOS by default: the two releases score differently here
    differs = 0
    for release, bos in (("0.4.13", True), ("0.4.9.1", False)):
        theirs = _lm_eval(manager, repo.path, bos)
        for task, items, metric in (("wmdp_mini", data.wmdp, "wmdp_acc"), ("mmlu_mini", data.mmlu, "mmlu_acc")):
            ours = wmdp.probe(engine, items, metric, lm_eval=release)
            assert ours.details["lm_eval"] == release
            assert len(theirs[task]) == len(ours.items) == len(items.questions)
            for sample, item in zip(theirs[task], ours.items):
                lls = [float(ll) for ll, _ in sample["filtered_resps"]]
                assert item.extra["loglikelihoods"] == pytest.approx(lls, abs=1e-4), (release, task, sample["doc_id"])
                assert item.score == sample["acc"], (release, task, sample["doc_id"])
            if release == "0.4.13":
                old = wmdp.probe(engine, items, metric, lm_eval="0.4.9.1")
                differs += sum(a.extra["loglikelihoods"] != b.extra["loglikelihoods"]
                               for a, b in zip(ours.items, old.items))
    assert differs  # the BOS changes the scores: the comparison above tells the releases apart


def test_inputs_longer_than_the_context_are_cut_as_lm_evaluation_harness_cuts_them(peer, wmdp_world):
    """With a 24-token context every prompt is too long: lm-eval keeps the last 25 tokens and feeds 24; so does the
    hf engine (the same log-likelihoods), and it counts the cuts."""
    from lm_eval import simple_evaluate

    manager, data = peer
    repo = resolve("miniature/wmdp-original", cache_dir=wmdp_world.hub_cache)
    loaded = load_model(repo)
    engine = Engine(loaded.model, loaded.tokenizer, batch_size=8)
    engine.context = 24
    ours = wmdp.probe(engine, data.wmdp, "wmdp_acc")
    assert engine.truncated["score"] == 4 * len(data.wmdp.questions)
    out = simple_evaluate(model="hf", model_args={"pretrained": str(repo.path), "dtype": "float32", "max_length": 24},
                          tasks=["wmdp_mini"], task_manager=manager, device="cpu", batch_size=8, log_samples=True)
    for sample in out["samples"]["wmdp_mini"]:
        item = ours.items[sample["doc_id"]]
        assert item.extra["loglikelihoods"] == pytest.approx([float(ll) for ll, _ in sample["filtered_resps"]],
                                                             abs=1e-4)


OPEN_UNLEARNING = Path(__file__).resolve().parent / "fixtures" / "peers" / "open_unlearning_tofu.json"
TOFU_MODELS = ("tofu-original", "tofu-fragile", "tofu-robust", "tofu-retain90")


@pytest.fixture(scope="module")
def tofu_runs(tofu_world):
    """open-unlearning's stored outputs, and the tool's TOFU probes (default settings) on the same four models."""
    from types import SimpleNamespace

    theirs = json.loads(OPEN_UNLEARNING.read_text())
    if theirs["world"]["commits"] != tofu_world.info["commits"]:  # the repos' content, not the build's timings
        pytest.fail(f"{OPEN_UNLEARNING.name} was made on another TOFU world; remake it: {theirs['command']}")
    data = load_forget_data(resolve("miniature/tofu", kind="dataset", cache_dir=tofu_world.hub_cache).path,
                            parse_spec({"benchmark": "tofu", "dataset": "miniature/tofu"}, "test"))
    settings = SimpleNamespace(**TofuSpec().model_dump())
    ours = {}
    for name in TOFU_MODELS:
        loaded = load_model(resolve(f"miniature/{name}", cache_dir=tofu_world.hub_cache))
        engine = Engine(loaded.model, loaded.tokenizer, batch_size=8)
        ours[name] = {metric: tofu.probe(engine, data.tofu[part], metric, settings, False)
                      for part, metric in tofu.SETS.items()}
    return theirs["models"], ours


@pytest.mark.parametrize("name", TOFU_MODELS)
def test_tofu_items_equal_open_unlearnings(name, tofu_runs):
    theirs, ours = tofu_runs
    peer, items = theirs[f"miniature/{name}"], ours[name]["tofu_f"].items
    for i, item in enumerate(items):
        prob = peer["forget_Q_A_Prob"]["value_by_index"][str(i)]
        rouge = peer["forget_Q_A_ROUGE"]["value_by_index"][str(i)]
        assert item.extra["avg_loss"] == pytest.approx(prob["avg_loss"], abs=1e-4), i
        assert item.generation == rouge["generation"], i
        assert item.score == pytest.approx(rouge["rougeL_recall"], abs=1e-12), i
        assert item.extra["truth_ratio"] == pytest.approx(peer["forget_truth_ratio"]["value_by_index"][str(i)]["score"],
                                                          rel=1e-4), i


@pytest.mark.parametrize("name", ("tofu-original", "tofu-fragile", "tofu-robust"))
def test_tofu_figures_equal_open_unlearnings(name, tofu_runs):
    """Forget probability, ROUGE and truth ratio, model utility and forget quality (against the retained model)
    through the tool's analysis."""
    from unlearn_audit.analysis.figures import FULL, Reference, analyse

    theirs, ours = tofu_runs
    outputs = {"original": {FULL: ours["tofu-original"]}, "unlearned": {FULL: ours[name]},
               "retrain": {FULL: ours["tofu-retain90"]}}
    result = analyse(outputs, Reference("retrain", None, "test"), min_gap=10, resamples=10)
    values, peer = result.values["unlearned"][FULL], theirs[f"miniature/{name}"]
    for metric, figure, rel in (("tofu_rouge_f", "forget_Q_A_ROUGE", 1e-12), ("tofu_prob_f", "forget_Q_A_Prob", 1e-4),
                                ("tofu_tr_f", "forget_truth_ratio", 1e-4), ("tofu_utility", "model_utility", 1e-4)):
        assert values[metric].value / 100 == pytest.approx(peer[figure]["agg_value"], rel=rel), metric
    assert result.forget_quality["unlearned"][FULL] == pytest.approx(peer["forget_quality"]["agg_value"], rel=1e-4)
    assert np.isfinite(result.forget_quality["unlearned"][FULL])


MUSE = Path(__file__).resolve().parent / "fixtures" / "peers" / "muse_eval.json"


@pytest.fixture(scope="module")
def muse_peer(world):
    from unlearn_audit.inputs.spec import spec_for_dataset

    theirs = json.loads(MUSE.read_text())
    if theirs["world"]["commits"] != world.info["commits"]:  # the repos' content, not the build's timings
        pytest.fail(f"{MUSE.name} was made on another MUSE miniature; remake it: {theirs['command']}")
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    return theirs["models"], load_forget_data(folder, spec_for_dataset("miniature/news"))


@pytest.mark.parametrize("name", ("original", "fragile", "robust", "retrain", "ga_gdr-lr1e-04-fp32",
                                  "npo_gdr-lr1e-04-fp32"))
def test_muse_metrics_equal_muses_own_code(name, muse_peer, world):
    """MUSE's own ``metrics/*.py`` (stored outputs, ``benchmarks/peers/muse_eval.py``) against the tool's MUSE probes
    at the default ``--flavour muse``: every VerbMem and KnowMem generation and ROUGE-L F1 equal, every Min-40% within
    1e-4, the forget/holdout AUC equal."""
    from unlearn_audit.analysis.statistics import auc_forget_vs_holdout
    from unlearn_audit.probes import muse

    theirs, data = muse_peer
    peer = theirs[f"miniature/{name}"]
    loaded = load_model(resolve(f"miniature/{name}", cache_dir=world.hub_cache, offline=True))
    engine = Engine(loaded.model, loaded.tokenizer)
    verbmem = muse.verbmem(engine, data.verbmem_prompts, data.verbmem_refs, 128)
    for item, d in zip(verbmem.items, peer["verbmem_f"], strict=True):
        assert (item.reference, item.generation) == (d["gt"], d["response"])
        assert item.score == pytest.approx(d["rougeL"], abs=1e-12)
    for metric, qa in (("knowmem_f", data.knowmem_forget), ("knowmem_r", data.knowmem_retain)):
        out = muse.knowmem(engine, qa, metric, 32)
        for item, d in zip(out.items, peer[metric], strict=True):
            assert item.generation == d["response"] and item.score == pytest.approx(d["rougeL"], abs=1e-12)
    privleak = muse.privleak(engine, data.privleak_forget, data.privleak_holdout)
    forget, holdout = privleak.scores("forget"), privleak.scores("holdout")
    assert forget == pytest.approx(peer["privleak"]["forget"], abs=1e-4)
    assert holdout == pytest.approx(peer["privleak"]["holdout"], abs=1e-4)
    assert auc_forget_vs_holdout(forget, holdout) == pytest.approx(peer["privleak"]["auc_forget_holdout_min40"],
                                                                   abs=1e-12)
