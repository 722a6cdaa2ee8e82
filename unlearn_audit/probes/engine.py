"""The batched inference engine every probe runs on: greedy generation and token log-probabilities.

Batches are sorted by length (little padding); generation pads on the left and uses the KV cache, each
sequence stops at its first stop string (the batch stops when all have), scoring takes every token's
log-probability from one forward pass per batch. Inputs longer than the model's context are truncated
(generation keeps the end of the prompt, scoring keeps the start of the text) and counted in
:attr:`Engine.truncated`, never a crash. A batch that runs out of accelerator memory is split in halves
and retried (down to one item); the batch size stays halved for the rest of the run.

The probes talk to an :class:`InferenceEngine`; :data:`ENGINES` maps ``--engine`` names to
implementations (``hf``: transformers). A serving backend such as vLLM (which serves GPTQ, AWQ and
bitsandbytes checkpoints) fits behind the same three members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

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


def auto_batch_size(model: Any, max_tokens: int, cap: int = 64) -> int:
    """A batch size that fits the free accelerator memory: per sequence, the KV cache and two float32
    copies of the logits over ``max_tokens`` positions, with 40% of free memory kept spare. CPU: 16."""
    import torch

    param = next(model.parameters())
    if param.device.type != "cuda":
        return 16
    free, _ = torch.cuda.mem_get_info(param.device)
    config = model.config
    layers = getattr(config, "num_hidden_layers", 32)
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 32)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = param.element_size() if param.is_floating_point() else 2
    per_token = 2 * layers * heads * head_dim * width + 2 * 4 * config.vocab_size
    return max(1, min(cap, int(0.6 * free / (per_token * max_tokens))))


class _StopStrings:
    """Stopping criterion: a sequence is done once its new text contains a stop string."""

    def __init__(self, tokenizer: Any, width: int, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.width, self.stops = tokenizer, width, stops

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts], device=input_ids.device)


@dataclass
class Engine:
    """Runs a causal LM over many prompts or texts in length-sorted batches (HF transformers backend)."""

    model: Any
    tokenizer: Any
    batch_size: int | None = 16
    """Items per batch; None chooses from free accelerator memory (16 on CPU)."""
    sample_temperature: float | None = None
    """None: greedy decoding (MUSE). A temperature: sampling, as the quantization paper's fork does."""
    seed: int = 0
    truncated: dict[str, int] = field(default_factory=lambda: {"generate": 0, "score": 0})
    oom_splits: int = 0
    """How many times a batch ran out of memory and was split."""

    def __post_init__(self) -> None:
        self.device = next(self.model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 2048
        if self.batch_size is None:
            self.batch_size = auto_batch_size(self.model, self.context)

    def _each_batch(self, encoded: list[list[int]], run: Callable[[list[int]], None]) -> None:
        """``run`` over length-sorted batches; a batch that runs out of memory is split in halves and
        retried, and later batches use the halved size."""
        pending = self._batches(encoded)
        while pending:
            batch = pending.pop(0)
            try:
                run(batch)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if len(batch) == 1:
                    raise out_of_memory_at_batch_one(self.device) from exc
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                half = (len(batch) + 1) // 2
                self.batch_size = max(1, min(self.batch_size, half))
                self.oom_splits += 1
                pending[:0] = [batch[:half], batch[half:]]

    def _pad(self, seqs: list[list[int]], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask) of ``seqs`` padded to one width: on the left for generation (new
        tokens follow every prompt directly), on the right for scoring."""
        width = max(len(seq) for seq in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq)
            mask[row, span] = 1
        return ids, mask

    def _batches(self, encoded: list[list[int]]) -> list[list[int]]:
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, advance: Advance | None = None,
                 stops: tuple[str, ...] = (), add_special_tokens: bool = True) -> list[str]:
        """Continuations of ``prompts`` (tokenised as the tokenizer does, BOS included): greedy, or
        sampled at ``sample_temperature`` with a seed per batch (reproducible for the same settings).
        With ``stops``, a sequence stops generating once its text contains one (the text is returned
        whole; the caller cuts it), which with greedy decoding changes nothing before the stop.
        ``add_special_tokens=False`` for prompts that already carry them (a chat template's BOS)."""
        from transformers import GenerationConfig, StoppingCriteriaList

        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        sampling = {"do_sample": False}
        if self.sample_temperature is not None:
            sampling = {"do_sample": True, "temperature": self.sample_temperature, "top_k": 0, "top_p": 1.0}
        # use_cache on whatever the checkpoint's generation_config says (some ship use_cache: false: 7x slower)
        config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=1, pad_token_id=self.pad_id, use_cache=True,
                                  eos_token_id=eos, **sampling)
        limit = max(1, self.context - max_new_tokens)
        encoded = []
        for ids in self.tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]:
            if len(ids) > limit:
                self.truncated["generate"] += 1
                ids = ids[-limit:]
            encoded.append(ids)
        outputs: list[str] = [""] * len(prompts)

        def run(batch: list[int]) -> None:
            ids, mask = self._pad([encoded[i] for i in batch], left=True)
            width = ids.shape[1]
            if self.sample_temperature is not None:
                torch.manual_seed(self.seed + batch[0])
            criteria = StoppingCriteriaList([_StopStrings(self.tokenizer, width, stops)]) if stops else None
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, stopping_criteria=criteria)
            texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for row, i in enumerate(batch):
                outputs[i] = texts[row]
            if advance:
                advance(len(batch))

        self._each_batch(encoded, run)
        return outputs

    @torch.no_grad()
    def token_stats(self, texts: list[str], advance: Advance | None = None) -> list[TokenStats]:
        """For each text, from one forward pass: log p(token_t | tokens_<t) for every token after the
        first (BOS), and the mean and standard deviation of log p over the vocabulary at each position
        (what Min-K%++ normalises by)."""
        encoded = []
        for ids in self.tokenizer(texts)["input_ids"]:
            if len(ids) > self.context:
                self.truncated["score"] += 1
                ids = ids[: self.context]
            encoded.append(ids)
        result: list[TokenStats] = [TokenStats(np.empty(0), np.empty(0), np.empty(0))] * len(texts)

        def run(batch: list[int]) -> None:
            ids, mask = self._pad([encoded[i] for i in batch], left=False)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1).to(self.device)).squeeze(-1)
            probs = logprobs.exp()
            mu = (probs * logprobs).sum(-1)
            var = (probs * logprobs.square()).sum(-1) - mu.square()
            picked, mu, var = picked.cpu().numpy(), mu.cpu().numpy(), var.cpu().numpy()
            for row, i in enumerate(batch):
                n = len(encoded[i]) - 1
                result[i] = TokenStats(picked[row, :n].astype(np.float64), mu[row, :n].astype(np.float64),
                                       np.sqrt(np.clip(var[row, :n].astype(np.float64), 1e-6, None)))
            if advance:
                advance(len(batch))

        self._each_batch(encoded, run)
        return result


ENGINES: dict[str, type] = {"hf": Engine}
"""``--engine`` names: ``hf`` runs the model with transformers (every quantizer's model is a transformers
model). Add a backend by implementing :class:`InferenceEngine` and registering it here."""


@dataclass(frozen=True)
class TokenStats:
    """Per-position figures of one scored text (positions 1..n-1)."""

    logprobs: np.ndarray
    """log p of the actual next token."""
    mu: np.ndarray
    """E_z[log p(z)] over the vocabulary."""
    sigma: np.ndarray
    """Standard deviation of log p(z) over the vocabulary (variance clamped at 1e-6, as open-unlearning does)."""
