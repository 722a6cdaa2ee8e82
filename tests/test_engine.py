"""The probe engine on the miniature's original model: batching, sampling, long inputs."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn_audit.data import load_forget_data
from unlearn_audit.hub import resolve
from unlearn_audit.models import load_model
from unlearn_audit.probes.engine import Engine
from unlearn_audit.spec import spec_for_dataset


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
    with pytest.raises(RuntimeError):  # one item still too big: the error reaches the CLI's handler
        Engine(original.model, original.tokenizer, batch_size=4).token_stats(texts[:3])


def test_auto_batch_size_on_cpu_is_sixteen(original):
    assert Engine(original.model, original.tokenizer, batch_size=None).batch_size == 16
