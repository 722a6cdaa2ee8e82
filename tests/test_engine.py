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
