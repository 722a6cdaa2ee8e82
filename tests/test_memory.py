"""Memory you can state: chunked scoring gives the model's own numbers, batches follow the token budget,
and the peak-memory formula of docs/speed.md holds when measured (and fails for the unchunked scorer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn_audit.engines.hf import HFEngine as Engine
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.support.memory import TokenBudget, per_token_bytes, score_chunk_rows

STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"


def _full_logit_stats(model, tokenizer, text):  # noqa: ANN001, ANN202 - the unchunked computation, by hand
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    picked = logprobs.gather(-1, ids[0, 1:, None]).squeeze(-1)
    mu = (logprobs.exp() * logprobs).sum(-1)
    sigma = ((logprobs.exp() * (logprobs - mu[:, None]).square()).sum(-1)).sqrt()
    return picked.numpy(), mu.numpy(), sigma.numpy()


@pytest.mark.parametrize("which", ["miniature", "stories260K"])
def test_chunked_scoring_equals_the_models_own_logits(world, which, monkeypatch):
    """Chunks of 16 positions (forced) over batched, padded texts give the full-logit figures; stories260K
    ties its output layer to the embeddings (the head found through get_output_embeddings)."""
    if which == "miniature":
        loaded = load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))
    else:
        loaded = load_model(resolve(str(STORIES)))
    texts = ["Once upon a time there was a little girl named Lily.", "The cat sat.",
             "Tom and Sue went to the park to play with a big red ball, and the sun was warm."]
    monkeypatch.setattr("unlearn_audit.engines.hf.score_chunk_rows", lambda vocab: 16)
    engine = Engine(loaded.model, loaded.tokenizer, batch_size=3)
    got = engine.token_stats(texts)
    assert engine.describe()["scoring"] == "chunked"
    for text, stats in zip(texts, got):
        picked, mu, sigma = _full_logit_stats(loaded.model, loaded.tokenizer, text)
        np.testing.assert_allclose(stats.logprobs, picked, atol=2e-5)
        np.testing.assert_allclose(stats.mu, mu, atol=2e-5)
        np.testing.assert_allclose(stats.sigma, sigma, atol=2e-4)


def test_a_head_the_engine_cannot_reproduce_falls_back_to_the_models_logits(world, monkeypatch):
    loaded = load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))
    texts = ["Once upon a time there was a little girl named Lily.", "The cat sat."]
    want = Engine(loaded.model, loaded.tokenizer, batch_size=2).token_stats(texts)
    engine = Engine(loaded.model, loaded.tokenizer, batch_size=2)
    engine.scoring.post.append((lambda x, c: x * c, 2.0))  # a post-processing the model does not do
    got = engine.token_stats(texts)
    assert engine.describe()["scoring"] == "full logits"
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_batches_fill_up_to_the_token_budget():
    budget = TokenBudget(items=4, tokens=100)
    lengths = [10, 50, 20, 20, 30, 5, 5, 5, 5, 5]
    batches = budget.split(lengths)
    assert batches[0] == [1, 4]  # 50 and 30: a third would make 3 × 50 > 100
    for batch in batches:
        assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * lengths[batch[0]] <= 100)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert TokenBudget(items=4, tokens=10).split([50, 40]) == [[0], [1]]  # longer than the budget: alone
    assert budget.split([10, 10, 10], extra=30) == [[0, 1], [2]]  # generation: 40 tokens per sequence
    budget.halve(failed=2, longest=50)
    assert (budget.items, budget.tokens) == (1, 50)


def test_automatic_budget_reads_free_memory(world, monkeypatch):
    loaded = load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))
    per_token = per_token_bytes(loaded.model.config, 4)
    monkeypatch.setattr("unlearn_audit.support.memory.available_cpu_bytes", lambda: 1000 * per_token)
    budget = TokenBudget.automatic(loaded.model)
    assert budget.items == 16 and budget.tokens == 600  # 60% of free memory


_MEASURE = r"""
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from unlearn_audit.support.memory import peak_bytes
from unlearn_audit.engines.hf import HFEngine as Engine

class Tok:
    pad_token_id = eos_token_id = 0
    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[1 + (7 * i + j) % 31000 for j in range(int(t))] for i, t in enumerate(texts)]}

torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
model = LlamaForCausalLM(config).eval()
engine = Engine(model, Tok(), batch_size=8)
if sys.argv[1] == "unchunked":
    engine.scoring = None
engine.token_stats(["8"])  # warm up (allocator, kernels)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
engine.token_stats(["512"] * 8)
with open("/proc/self/status") as f:  # VmHWM: this process image's peak (ru_maxrss carries the forking
    peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))  # parent's size across exec)
n = sum(p.numel() for p in model.parameters())
print(json.dumps({"grew": peak - before, "weights": n * 4, "formula": peak_bytes(n, config, 4, 8 * 512),
                  "scoring": engine.describe()["scoring"]}))
"""


def _measure(mode: str) -> dict[str, int]:
    # the peak is the child's VmHWM: ru_maxrss carries the forking parent's size across exec (in a full suite
    # the pytest process is over 1 GB, and the figure read 609-1,053 MB); a clean environment and a fixed glibc
    # mmap threshold keep the measured process independent of the suite around it
    env = {name: os.environ[name] for name in ("PATH", "HOME", "PYTHONPATH", "UNLEARN_AUDIT_HOME") if name in os.environ}
    env.update({"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20), "HF_HUB_OFFLINE": "1"})
    out = subprocess.run([sys.executable, "-c", _MEASURE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_readme_peak_memory_formula_holds_when_measured():
    """8 texts of 512 tokens, vocabulary 32k: the scorer's growth stays within the formula's non-weight
    terms (+30%), where scoring from the model's full [8, 512, 32000] logits (the fallback; the old scorer
    kept five float32 copies of them) exceeds it at least twice."""
    chunked = _measure("chunked")
    assert chunked.pop("scoring") == "chunked", chunked
    bound = 1.3 * (chunked["formula"] - chunked["weights"])
    assert chunked["grew"] <= bound, chunked
    assert chunked["grew"] >= 0.3 * (chunked["formula"] - chunked["weights"]), chunked  # the chunk is really used
    unchunked = _measure("unchunked")
    unchunked.pop("scoring")
    assert unchunked["grew"] > 2 * bound, unchunked
    assert score_chunk_rows(32000) == 524


_LOAD = r"""
import json, sys, torch
from pathlib import Path
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from transformers import AutoModelForCausalLM
import transformers.models.llama.modeling_llama  # imported before the baseline in both modes
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
if sys.argv[2] == "widened":
    model = load_model(resolve(sys.argv[1]), dtype="float32", tokenizer="none needed").model
else:  # transformers converting while it loads
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
print(json.dumps({"grew": peak - before, "weights": sum(p.numel() * 4 for p in model.parameters()),
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
"""


def test_a_16_bit_checkpoint_loads_in_float32_at_the_weights_size(tmp_path):
    """A bfloat16 checkpoint in a float32 run: transformers' own conversion holds the mapped file beside the
    float32 weights (measured here as the control, > 1.4x); loaded as stored and widened tensor by tensor
    it stays within 1.25x of the float32 weights (the issue's target: 1.3x)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    env = {name: os.environ[name] for name in ("PATH", "HOME", "PYTHONPATH", "UNLEARN_AUDIT_HOME") if name in os.environ}
    env.update({"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20), "HF_HUB_OFFLINE": "1"})
    measured = {}
    for mode in ("widened", "transformers"):
        out = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "bf16"), mode], capture_output=True, text=True,
                             check=True, env=env)
        measured[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    for figures in measured.values():
        assert figures["dtypes"] == ["torch.float32"]
    weights = measured["widened"]["weights"]
    assert measured["widened"]["grew"] <= 1.25 * weights, measured  # measured 1.19x (the largest tensor in flight)
    assert measured["transformers"]["grew"] > 1.4 * weights, measured  # measured 1.54x


def test_widened_loading_equals_loading_in_float32(world, tmp_path):
    """The widened route gives exactly what transformers' float32 load gives: every parameter and buffer, and
    the logits; a checkpoint already in float32, or mixing dtypes, takes the direct route."""
    from transformers import AutoModelForCausalLM

    from unlearn_audit.inputs.widen import stored_float_dtype, widen_route

    source = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            (tmp_path / "bf16" / name).write_bytes((source / name).read_bytes())
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert widen_route(tmp_path / "bf16", config, "float32") == "bfloat16"
    assert widen_route(tmp_path / "bf16", config, "bfloat16") is None
    assert stored_float_dtype(source) == "float32" and widen_route(source, config, "float32") is None
    mine = load_model(resolve(str(tmp_path / "bf16"))).model
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b), name
    for (name, a), (_, b) in zip(mine.named_buffers(), theirs.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.equal(mine(input_ids=ids).logits, theirs(input_ids=ids).logits)


def test_the_recorded_peak_is_this_process_not_its_parent():
    """A process started by a large one (a Python harness running the CLI) records its own peak: ru_maxrss would
    carry the parent's 400 MB across exec."""
    import resource

    ballast = bytearray(400 * 2**20)  # resident in this (parent) process
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    code = "from unlearn_audit.support.resources import peak_rss_mb; import resource; " \
           "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    recorded, inherited = (float(x) for x in out.stdout.split())
    assert recorded < 300, recorded
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > 400 and inherited > 400  # what it avoids
    del ballast
