"""Memory you can state: what probing a model costs, as a formula of its shape, and the batches that fit.

Peak memory while probing one model (bytes), with ``b`` the width of the run dtype (4 for float32, 2 for
bfloat16/float16):

    peak ≈ P·b                                  the weights (P parameters)
         + N·(2·L·H_kv·d + 4·h + 3·I)·b         N tokens in flight: KV cache + a layer's activations
         + C·V·16                               one scoring chunk: C positions × V vocabulary, float32

``L`` layers, ``H_kv`` key/value heads of width ``d``, hidden size ``h``, MLP width ``I``; ``N`` = items in
the batch × the longest sequence of the batch (prompt + new tokens when generating); ``C`` =
:func:`score_chunk_rows` (the scorer turns C positions at a time into vocabulary statistics, so the
``[tokens, V]`` temporaries never grow with the batch). ``tests/test_memory.py`` measures it on a model.

The batch builder (:class:`TokenBudget`) fills each batch up to a number of tokens computed from free
memory and the per-token cost above, so short texts go in large batches and long ones in small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

SCORE_CHUNK_BYTES = 256 * 2**20
"""Budget for one scoring chunk's float32 temporaries (logits, log-softmax, probabilities, products)."""
SPARE = 0.6
"""Share of free memory the batches may use (the rest: allocator fragmentation, other processes)."""
CPU_CAP, ACCELERATOR_CAP = 16, 64
"""Most items per batch when the size is chosen automatically (on CPU larger batches gain little)."""


def score_chunk_rows(vocab_size: int) -> int:
    """Positions turned into vocabulary statistics at once: four float32 [rows, V] temporaries within
    :data:`SCORE_CHUNK_BYTES` (1 024 rows for a 16k vocabulary, 128 for Llama-3's 128k)."""
    return max(16, SCORE_CHUNK_BYTES // (16 * max(1, vocab_size)))


def _shape(config: Any) -> tuple[int, int, int, int, int]:
    """(layers, key/value heads, head width, hidden size, MLP width) of a transformers config."""
    config = getattr(config, "text_config", None) or config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    return config.num_hidden_layers, kv_heads, head_dim, hidden, intermediate


def per_token_bytes(config: Any, width: int) -> int:
    """Bytes one token in flight costs: its KV cache over every layer and one layer's activations."""
    layers, kv_heads, head_dim, hidden, intermediate = _shape(config)
    return (2 * layers * kv_heads * head_dim + 4 * hidden + 3 * intermediate) * width


def peak_bytes(n_parameters: int, config: Any, width: int, tokens: int) -> int:
    """The formula in docs/speed.md: peak memory of probing with ``tokens`` tokens in flight."""
    vocab = (getattr(config, "text_config", None) or config).vocab_size
    return (n_parameters * width + tokens * per_token_bytes(config, width)
            + score_chunk_rows(vocab) * vocab * 16)


def available_cpu_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; 8 GiB when neither is readable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def free_bytes(model: Any) -> tuple[int, str]:
    """Free memory where ``model`` runs, and on what: the smallest free memory of the CUDA devices it is
    spread over (``--device-map auto`` places layers, their KV cache and activations on each), else the
    CPU's available memory."""
    import torch

    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    if devices:
        return min(torch.cuda.mem_get_info(d)[0] for d in devices), "cuda"
    device = next(model.parameters()).device
    return available_cpu_bytes(), device.type


@dataclass
class TokenBudget:
    """How batches are filled: at most ``items`` texts and at most ``tokens`` tokens (items × the longest
    sequence of the batch). ``tokens`` None: no token limit (an explicit ``--batch-size``)."""

    items: int
    tokens: int | None = None

    @classmethod
    def automatic(cls, model: Any) -> TokenBudget:
        """From free memory and the model's per-token cost (see the module's formula)."""
        free, kind = free_bytes(model)
        param = next(model.parameters())
        width = param.element_size() if param.is_floating_point() else 2
        tokens = max(1, int(SPARE * free / per_token_bytes(model.config, width)))
        return cls(items=CPU_CAP if kind == "cpu" else ACCELERATOR_CAP, tokens=tokens)

    def split(self, lengths: list[int], extra: int = 0) -> list[list[int]]:
        """Indices of ``lengths`` in batches, longest first; each batch within both limits (a single item
        longer than the token budget still gets a batch of its own). ``extra``: tokens each sequence grows
        by (new tokens of a generation)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            if batches:
                batch = batches[-1]
                longest = lengths[batch[0]] + extra
                if len(batch) < self.items and (self.tokens is None or (len(batch) + 1) * longest <= self.tokens):
                    batch.append(i)
                    continue
            batches.append([i])
        return batches

    def halve(self, failed: int, longest: int) -> None:
        """After a batch of ``failed`` items and ``longest`` tokens ran out of memory: later batches at most
        half as large, in items and in tokens."""
        half = max(1, (failed + 1) // 2)
        self.items = max(1, min(self.items, half))
        if self.tokens is not None:
            self.tokens = max(1, min(self.tokens, half * longest))


def release_freed() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc's ``malloc_trim``): after a model
    is dropped, so the next one does not start on top of the last one's fragments (measured: a second model's
    runs peaked 300-500 MB higher without it on a 1.17B model)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass

