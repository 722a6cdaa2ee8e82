"""The transformers engine (``--engine hf``): greedy generation and token log-probabilities on any model
transformers loads, every quantizer's model included.

Batches are sorted by length (little padding); generation pads on the left and uses the KV cache, each
sequence stops at its first stop string (the batch stops when all have), scoring takes every token's
log-probability from one forward pass per batch. Inputs longer than the model's context are truncated
(generation keeps the end of the prompt, scoring keeps the start of the text) and counted in
:attr:`HFEngine.truncated`, never a crash. A batch that runs out of accelerator memory is split in halves
and retried (down to one item); the batch size stays halved for the rest of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..support.memory import TokenBudget, score_chunk_rows
from .base import Advance, TokenStats, context_length, fit_pairs, is_out_of_memory, out_of_memory_at_batch_one


class _StopStrings:
    """Stopping criterion: a sequence is done once its new text contains a stop string."""

    def __init__(self, tokenizer: Any, width: int, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.width, self.stops = tokenizer, width, stops

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts], device=input_ids.device)


@dataclass
class HFEngine:
    """Runs a causal LM over many prompts or texts in length-sorted batches (HF transformers backend)."""

    model: Any
    tokenizer: Any
    batch_size: int | None = 16
    """Most items per batch; None chooses from free memory and the model's per-token cost (at most 16 on
    CPU, 64 on an accelerator, and as many tokens per batch as fit: see :mod:`unlearn_audit.support.memory`)."""
    sample_temperature: float | None = None
    """None: greedy decoding (MUSE). A temperature: sampling, as the quantization paper's fork does."""
    seed: int = 0
    truncated: dict[str, int] = field(default_factory=lambda: {"generate": 0, "score": 0})
    oom_splits: int = 0
    """How many times a batch ran out of memory and was split."""
    largest_batch: int = 0
    """The most items that went through the model at once."""
    largest_tokens: int = 0
    """The most tokens in flight at once (items × the batch's longest sequence, new tokens included): the ``N``
    of :mod:`unlearn_audit.support.memory`'s formula."""

    def __post_init__(self) -> None:
        self.device = next(self.model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.context = context_length(self.model.config, self.tokenizer)
        self.budget = TokenBudget.automatic(self.model) if self.batch_size is None else TokenBudget(self.batch_size)
        self.batch_size = self.budget.items
        self.scoring = _ChunkedHead.find(self.model)

    def describe(self) -> dict[str, Any]:
        """What the record keeps of how this engine batched and scored."""
        from ..support.memory import peak_bytes

        params = list(self.model.parameters())
        width = params[0].element_size() if params[0].is_floating_point() else 2
        stated = peak_bytes(sum(p.numel() for p in params), self.model.config, width, self.largest_tokens)
        return {"batch_size": self.batch_size, "largest_batch": self.largest_batch, "token_budget": self.budget.tokens,
                "largest_tokens": self.largest_tokens, "stated_peak_mb": round(stated / 2**20, 1),
                "oom_splits": self.oom_splits,
                "scoring": "chunked" if self.scoring is not None and self.scoring.verified is not False
                else "full logits"}

    def _each_batch(self, encoded: list[list[int]], run: Callable[[list[int]], None], extra: int = 0) -> None:
        """``run`` over length-sorted batches within the token budget; a batch that runs out of memory is
        split in halves and retried, and later batches are at most half as large."""
        pending = self.budget.split([len(seq) for seq in encoded], extra)
        while pending:
            batch = pending.pop(0)
            try:
                run(batch)
                self.largest_batch = max(self.largest_batch, len(batch))
                self.largest_tokens = max(self.largest_tokens, len(batch) * (len(encoded[batch[0]]) + extra))
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if len(batch) == 1:
                    raise out_of_memory_at_batch_one(self.device) from exc
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.budget.halve(len(batch), len(encoded[batch[0]]) + extra)
                self.batch_size = self.budget.items
                self.oom_splits += 1
                half = (len(batch) + 1) // 2
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

        self._each_batch(encoded, run, extra=max_new_tokens)
        return outputs

    @torch.no_grad()
    def token_stats(self, texts: list[str], advance: Advance | None = None) -> list[TokenStats]:
        """For each text, from one forward pass: log p(token_t | tokens_<t) for every token after the
        first (BOS), and the mean and standard deviation of log p over the vocabulary at each position
        (what Min-K%++ normalises by). The vocabulary statistics are computed a chunk of positions at a
        time (padding skipped), so their float32 temporaries stay bounded whatever the batch."""
        encoded = []
        for ids in self.tokenizer(texts)["input_ids"]:
            if len(ids) > self.context:
                self.truncated["score"] += 1
                ids = ids[: self.context]
            encoded.append(ids)
        result: list[TokenStats] = [TokenStats(np.empty(0), np.empty(0), np.empty(0))] * len(texts)
        vocab = getattr(self.model.config, "vocab_size", None) or 32000
        rows = score_chunk_rows(vocab)

        def run(batch: list[int]) -> None:
            ids, mask = self._pad([encoded[i] for i in batch], left=False)
            ids, mask = ids.to(self.device), mask.to(self.device)
            valid = mask[:, 1:].bool()  # position t predicts token t+1 of the same text
            targets = ids[:, 1:][valid]
            head = self.scoring
            if head is not None and head.verified is None:
                head.verify(self.model, ids[:1, : min(16, ids.shape[1])])
            if head is not None and head.verified:
                hidden = head.hidden(self.model, ids, mask)[:, :-1][valid]  # [positions, hidden size]
                logits_of = head.logits
            else:  # an architecture whose head the engine cannot reproduce: the model's own logits
                hidden = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1][valid]
                logits_of = None
            picked, mu, var = [], [], []
            for start in range(0, len(targets), rows):
                chunk = hidden[start:start + rows]
                logprobs = torch.log_softmax((chunk if logits_of is None else logits_of(chunk)).float(), dim=-1)
                picked.append(logprobs.gather(-1, targets[start:start + rows, None]).squeeze(-1).cpu())
                probs = logprobs.exp()
                mean = (probs * logprobs).sum(-1)
                mu.append(mean.cpu())
                var.append(((probs * logprobs.square()).sum(-1) - mean.square()).cpu())
                del logprobs, probs
            counts = valid.sum(1).tolist()
            for row, (p, m, v) in enumerate(zip(*(torch.cat(x).double().split(counts) for x in (picked, mu, var)))):
                result[batch[row]] = TokenStats(p.numpy(), m.numpy(), np.sqrt(np.clip(v.numpy(), 1e-6, None)))
            if advance:
                advance(len(batch))

        self._each_batch(encoded, run)
        return result

    @torch.no_grad()
    def continuation_logprobs(self, pairs: list[tuple[list[int], list[int]]],
                              advance: Advance | None = None) -> list[np.ndarray]:
        """For each (context ids, continuation ids): log p of every continuation token given all before it, from
        one forward pass over ``context + continuation`` without its last token (the probes tokenise, as each
        benchmark's reference code does). As lm-evaluation-harness's ``hf`` model: a sequence longer than the
        context window keeps its last ``context + 1`` tokens, of which the model sees all but the last."""
        encoded, widths = fit_pairs(pairs, self.context + 1, self.truncated)
        result: list[np.ndarray] = [np.empty(0)] * len(pairs)
        # Pairs that feed the model the same tokens (a multiple-choice question's one-token answers) share one forward
        # pass, as the harness's ``hf`` model groups them: the states are the same, only the last target differs.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, seq in enumerate(encoded):
            groups.setdefault(tuple(seq[:-1]), []).append(i)
        fed = [list(seq) for seq in groups]  # what the model sees of each group
        members = list(groups.values())

        def run(batch: list[int]) -> None:
            ids, mask = self._pad([fed[g] for g in batch], left=False)
            ids, mask = ids.to(self.device), mask.to(self.device)
            head = self.scoring
            if head is not None and head.verified is None:
                head.verify(self.model, ids[:1, : min(16, ids.shape[1])])
            use_head = head is not None and head.verified
            hidden = (head.hidden(self.model, ids, mask) if use_head
                      else self.model(input_ids=ids, attention_mask=mask).logits)
            for row, g in enumerate(batch):
                n, width = len(fed[g]) + 1, max(widths[i] for i in members[g])
                states = hidden[row, n - width - 1:n - 1]  # position t predicts token t + 1
                logits = head.logits(states) if use_head else states
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for i in members[g]:
                    targets = torch.tensor(encoded[i][n - widths[i]:n], device=self.device)
                    result[i] = (logprobs[width - widths[i]:].gather(-1, targets[:, None]).squeeze(-1)
                                 .double().cpu().numpy())
            if advance:
                advance(sum(len(members[g]) for g in batch))

        self._each_batch(fed, run)
        return result


class _ChunkedHead:
    """Scoring without the full ``[batch, tokens, vocabulary]`` logits: the model runs with
    ``logits_to_keep=1``, a hook keeps its last hidden states, and the output layer (with the logit
    post-processing some architectures apply) is run on chunks of positions. Checked once per engine
    against the model's own logits on a few tokens; where they differ the engine uses the model's logits."""

    _POST = (("final_logit_softcapping", lambda x, c: torch.tanh(x / c) * c),  # Gemma 2/3
             ("logit_scale", lambda x, c: x * c),  # Cohere
             ("logits_scaling", lambda x, c: x / c))  # Granite

    def __init__(self, body: Any, head: Any, config: Any) -> None:
        self.body, self.head = body, head
        self.post = [(fn, getattr(config, name)) for name, fn in self._POST if getattr(config, name, None)]
        self.verified: bool | None = None

    @classmethod
    def find(cls, model: Any) -> _ChunkedHead | None:
        import inspect

        body = getattr(model, getattr(model, "base_model_prefix", "") or "model", None)
        getter = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        takes = "logits_to_keep" in inspect.signature(type(model).forward).parameters
        if not (isinstance(body, torch.nn.Module) and isinstance(head, torch.nn.Module) and takes):
            return None
        return cls(body, head, getattr(model, "config", None))

    def hidden(self, model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        handle = self.body.register_forward_hook(lambda module, args, out: kept.append(out[0]))
        try:
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        finally:
            handle.remove()
        return kept[-1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.head(hidden)
        for fn, value in self.post:
            out = fn(out, value)
        return out

    def verify(self, model: Any, ids: torch.Tensor) -> None:
        mask = torch.ones_like(ids)
        reference = model(input_ids=ids, attention_mask=mask).logits.float()
        mine = self.logits(self.hidden(model, ids, mask)).float()
        self.verified = mine.shape == reference.shape and bool(torch.allclose(mine, reference, rtol=1e-3, atol=1e-3))
