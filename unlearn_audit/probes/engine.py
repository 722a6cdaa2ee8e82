"""The batched inference engine every probe runs on: greedy generation and token log-probabilities.

Batches are sorted by length (little padding); generation pads on the left, scoring on the right.
Inputs longer than the model's context are truncated (generation keeps the end of the prompt, scoring
keeps the start of the text) and counted in :attr:`Engine.truncated`, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Advance = Callable[[int], None]
"""Called with the number of items just finished."""


@dataclass
class Engine:
    """Runs a causal LM over many prompts or texts in length-sorted batches (HF transformers backend)."""

    model: Any
    tokenizer: Any
    batch_size: int = 16
    sample_temperature: float | None = None
    """None: greedy decoding (MUSE). A temperature: sampling, as the quantization paper's fork does."""
    seed: int = 0
    truncated: dict[str, int] = field(default_factory=lambda: {"generate": 0, "score": 0})

    def __post_init__(self) -> None:
        self.device = next(self.model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 2048

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
    def generate(self, prompts: list[str], max_new_tokens: int, advance: Advance | None = None) -> list[str]:
        """Continuations of ``prompts`` (tokenised as the tokenizer does, BOS included): greedy, or
        sampled at ``sample_temperature`` with a seed per batch (reproducible for the same settings)."""
        from transformers import GenerationConfig

        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        sampling = {"do_sample": False}
        if self.sample_temperature is not None:
            sampling = {"do_sample": True, "temperature": self.sample_temperature, "top_k": 0, "top_p": 1.0}
        config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=1, pad_token_id=self.pad_id,
                                  eos_token_id=eos, **sampling)
        limit = max(1, self.context - max_new_tokens)
        encoded = []
        for ids in self.tokenizer(prompts)["input_ids"]:
            if len(ids) > limit:
                self.truncated["generate"] += 1
                ids = ids[-limit:]
            encoded.append(ids)
        outputs: list[str] = [""] * len(prompts)
        for batch in self._batches(encoded):
            ids, mask = self._pad([encoded[i] for i in batch], left=True)
            width = ids.shape[1]
            if self.sample_temperature is not None:
                torch.manual_seed(self.seed + batch[0])
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config)
            texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for row, i in enumerate(batch):
                outputs[i] = texts[row]
            if advance:
                advance(len(batch))
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
        for batch in self._batches(encoded):
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
        return result


@dataclass(frozen=True)
class TokenStats:
    """Per-position figures of one scored text (positions 1..n-1)."""

    logprobs: np.ndarray
    """log p of the actual next token."""
    mu: np.ndarray
    """E_z[log p(z)] over the vocabulary."""
    sigma: np.ndarray
    """Standard deviation of log p(z) over the vocabulary (variance clamped at 1e-6, as open-unlearning does)."""
