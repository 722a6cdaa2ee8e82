"""What every inference engine is to the probes: the :class:`InferenceEngine` interface, the per-token figures it
returns, and the rules all engines share (context length and truncation as lm-evaluation-harness computes them,
out-of-memory detection)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import RuntimeFailure

Advance = Callable[[int], None]
"""Called with the number of items just finished."""


class InferenceEngine(Protocol):
    """What the probes need from a backend."""

    tokenizer: Any
    sample_temperature: float | None
    seed: int
    truncated: dict[str, int]

    def generate(self, prompts: list[str], max_new_tokens: int, advance: Advance | None = None,
                 stops: tuple[str, ...] = (), add_special_tokens: bool = True) -> list[str]: ...

    def token_stats(self, texts: list[str], advance: Advance | None = None) -> list[TokenStats]: ...

    def continuation_logprobs(self, pairs: list[tuple[list[int], list[int]]],
                              advance: Advance | None = None) -> list[np.ndarray]: ...


_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
"""How torch says it: CUDA/MPS ``OutOfMemoryError`` ("out of memory"), the CPU allocator's RuntimeError
("DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."), or Python's MemoryError."""


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or any(t in text for t in _OOM_TEXTS))


def out_of_memory_at_batch_one(device: Any) -> RuntimeFailure:
    """What to do when a single item does not fit."""
    return RuntimeFailure(f"out of memory on {device} with a single item per batch",
                          "use a device with more memory (--device), spread the model with --device-map auto, "
                          "test fewer variants at once, or lower --max-items")


TOKENIZER_INFINITY = int(1e30)
"""transformers' ``model_max_length`` when the tokenizer sets none."""


def context_length(config: Any, tokenizer: Any = None, default: int = 2048) -> int:
    """The model's context in tokens, found as lm-evaluation-harness (0.4.13, ``resolve_max_length``) finds it: the
    text model's config (``text_config`` where nested) field ``n_positions``, ``max_position_embeddings`` or
    ``n_ctx``, else the tokenizer's ``model_max_length`` where set, else 2048."""
    cfg = getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return default


def fit_pairs(pairs: list[tuple[list[int], list[int]]], limit: int,
              truncated: dict[str, int]) -> tuple[list[list[int]], list[int]]:
    """Each ``context + continuation`` cut to its last ``limit`` tokens (as lm-evaluation-harness truncates on the
    left; cuts counted in ``truncated["score"]``), and how many of its last tokens are the continuation's (all of
    them whenever the continuation fits, one token of context kept)."""
    encoded, widths = [], []
    for context, continuation in pairs:
        seq = list(context) + list(continuation)
        if len(seq) > limit:
            truncated["score"] += 1
            seq = seq[-limit:]
        encoded.append(seq)
        widths.append(min(len(continuation), len(seq) - 1))
    return encoded, widths


@dataclass(frozen=True)
class TokenStats:
    """Per-position figures of one scored text (positions 1..n-1)."""

    logprobs: np.ndarray
    """log p of the actual next token."""
    mu: np.ndarray
    """E_z[log p(z)] over the vocabulary."""
    sigma: np.ndarray
    """Standard deviation of log p(z) over the vocabulary (variance clamped at 1e-6, as open-unlearning does)."""
