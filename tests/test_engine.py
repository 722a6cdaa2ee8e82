"""The probe engine on the miniature's original model: batching, sampling, long inputs."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn_audit.engines.base import context_length, is_out_of_memory
from unlearn_audit.engines.hf import HFEngine as Engine
from unlearn_audit.errors import RuntimeFailure
from unlearn_audit.inputs.data import load_forget_data
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.inputs.spec import spec_for_dataset


@pytest.fixture(scope="module")
def original(world):
    return load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))


@pytest.fixture(scope="module")
def data(world):
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    return load_forget_data(folder, spec_for_dataset("miniature/news"), max_items=6)


def test_batched_greedy_equals_one_at_a_time(original, data):
    prompts = data.verbmem_prompts
    batched = Engine(original.model, original.tokenizer, batch_size=6).generate(prompts, 24)
    single = [Engine(original.model, original.tokenizer, batch_size=1).generate([p], 24)[0] for p in prompts]
    assert batched == single


def test_batched_scores_equal_one_at_a_time(original, data):
    texts = data.privleak_forget + data.privleak_holdout
    batched = Engine(original.model, original.tokenizer, batch_size=12).token_stats(texts)
    for text, b in zip(texts, batched):
        (s,) = Engine(original.model, original.tokenizer, batch_size=1).token_stats([text])
        np.testing.assert_allclose(b.logprobs, s.logprobs, atol=1e-4)
        np.testing.assert_allclose(b.sigma, s.sigma, atol=1e-4)


def test_sampling_is_seeded(original, data):
    def run(seed: int) -> list[str]:
        return Engine(original.model, original.tokenizer, sample_temperature=5.0, seed=seed).generate(
            data.verbmem_prompts, 16)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_long_inputs_are_truncated_and_counted(original):
    engine = Engine(original.model, original.tokenizer)
    long_text = "river lamp stone " * 400  # far beyond the 512-token context
    (stats,) = engine.token_stats([long_text])
    assert len(stats.logprobs) == engine.context - 1
    (gen,) = engine.generate([long_text], 8)
    assert isinstance(gen, str)
    assert engine.truncated == {"generate": 1, "score": 1}


def test_context_length_is_found_as_lm_evaluation_harness_finds_it():
    """The text model's config first (n_positions, max_position_embeddings, n_ctx), then the tokenizer's
    model_max_length unless it is transformers' "unset", then 2048."""
    from types import SimpleNamespace as NS

    assert context_length(NS(n_positions=64, max_position_embeddings=128)) == 64
    assert context_length(NS(max_position_embeddings=128, n_ctx=32)) == 128
    assert context_length(NS(max_position_embeddings=4096, text_config=NS(max_position_embeddings=512))) == 512
    assert context_length(NS(), NS(model_max_length=300)) == 300
    assert context_length(NS(), NS(model_max_length=int(1e30))) == 2048
    assert context_length(NS(), None) == 2048


def test_stop_strings_end_each_sequence_without_changing_the_cut_text(original, data):
    from unlearn_audit.probes.muse import KNOWMEM_STOPS, cut_at_stops

    prompts = [f"Question: {q}\nAnswer:" for q in data.knowmem_forget.questions] * 2
    engine = Engine(original.model, original.tokenizer, batch_size=4)
    full = engine.generate(prompts, 32)
    stopped = engine.generate(prompts, 32, stops=KNOWMEM_STOPS)
    assert [cut_at_stops(g) for g in stopped] == [cut_at_stops(g) for g in full]
    # a sequence that hits a stop ends there (up to the tokens that complete the stop string)
    assert sum(len(g) for g in stopped) <= sum(len(g) for g in full)


def test_out_of_memory_halves_the_batch_and_gives_the_same_results(original, data, monkeypatch):
    prompts, texts = data.verbmem_prompts, data.privleak_forget + data.privleak_holdout
    expected_text = Engine(original.model, original.tokenizer, batch_size=6).generate(prompts, 16)
    expected_stats = Engine(original.model, original.tokenizer, batch_size=12).token_stats(texts)
    forward = original.model.forward

    def small_batches_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(original.model, "forward", small_batches_only)
    engine = Engine(original.model, original.tokenizer, batch_size=6)
    assert engine.generate(prompts, 16) == expected_text
    assert engine.batch_size == 2 and engine.oom_splits >= 2
    for got, want in zip(engine.token_stats(texts), expected_stats):
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)

    def always(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(original.model, "forward", always)
    with pytest.raises(RuntimeFailure, match="single item per batch") as caught:  # one item still too big
        Engine(original.model, original.tokenizer, batch_size=4).token_stats(texts[:3])
    assert "--device-map auto" in caught.value.fix


def test_cpu_out_of_memory_is_recognised_and_halves_the_batch(original, data, monkeypatch):
    """torch's CPU allocator says it differently: "DefaultCPUAllocator: can't allocate memory"."""
    texts = data.privleak_forget[:6]
    expected = Engine(original.model, original.tokenizer, batch_size=6).token_stats(texts)
    forward = original.model.forward

    def small_batches_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 53687091200 bytes. Error code 12 (Cannot allocate memory)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(original.model, "forward", small_batches_only)
    engine = Engine(original.model, original.tokenizer, batch_size=6)
    for got, want in zip(engine.token_stats(texts), expected):
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
    assert engine.batch_size == 2 and engine.oom_splits >= 1
    assert is_out_of_memory(MemoryError())


def test_auto_batch_size_on_cpu_is_sixteen(original):
    assert Engine(original.model, original.tokenizer, batch_size=None).batch_size == 16


def test_kv_cache_is_on_even_when_the_checkpoint_turns_it_off(original, data, monkeypatch):
    """A generation_config.json with use_cache: false made generation 7x slower; the engine turns it back on."""
    monkeypatch.setattr(original.model.generation_config, "use_cache", False)
    seen = []
    forward = original.model.forward

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs.get("use_cache"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(original.model, "forward", spy)
    Engine(original.model, original.tokenizer, batch_size=2).generate(data.verbmem_prompts[:2], 4)
    assert seen and all(flag is True for flag in seen)


def test_default_device_is_the_accelerator(monkeypatch):
    import torch

    from unlearn_audit.config import AuditConfig, resolve_device

    config = AuditConfig(model="x/y")
    assert config.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and config.resolved_dtype == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and config.resolved_dtype == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs: cuda:1 as given
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"


def test_a_large_model_on_cpu_is_warned_about(world, tmp_path, monkeypatch):
    """Over 1B parameters about to run on the CPU: one warning line with the memory it needs, in the record too."""
    from typer.testing import CliRunner

    import unlearn_audit.auditing.fetching as fetching
    from unlearn_audit.cli import app

    monkeypatch.setattr(fetching, "parameter_count", lambda shapes: 7_000_000_000)
    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--max-items", "2",
                                      "--min-items", "1", "--cache-dir", str(world.hub_cache), "--out", str(tmp_path),
                                      "--format", "json"])
    assert result.exit_code in (0, 1, 4), result.output
    assert "warning: miniature/fragile has 7.0B parameters and runs on the CPU in float32: about 28 GB" in result.output
    import json

    record = json.loads((tmp_path / "report.json").read_text())
    assert any("7.0B parameters" in note for note in record["notes"])
    assert record["execution"]["device"] == "cpu"


def test_offloaded_weights_are_neither_quantized_nor_restored_in_place(world):
    """--device-map auto can leave weights on ``meta`` (accelerate streams them from CPU or disk): writing a
    restored checkpoint into them would be lost, so the model is not restorable and RTN says why."""
    import torch

    from unlearn_audit.inputs.models import offloaded, restorable

    loaded = load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))
    assert not offloaded(loaded.model) and restorable(loaded.model, loaded.repo.path)
    layer = loaded.model.model.layers[0].mlp.down_proj
    layer.weight = torch.nn.Parameter(torch.empty(layer.weight.shape, device="meta"))
    assert offloaded(loaded.model) and not restorable(loaded.model, loaded.repo.path)
