"""Training and unlearning of the miniature's tiny causal LM (CPU, deterministic).

Unlearning is gradient ascent on the forget set plus gradient descent on the retain set, with
embeddings, norms and ``lm_head`` frozen. The ``fragile`` variant is projected after every step so
that each weight stays inside the cell it occupies on the original's RTN grid (asymmetric min-max,
group 128, 4 bits) and each group's min and max elements never move: 4-bit RTN of the unlearned model
then equals 4-bit RTN of the original exactly, the regime the quantization paper measured in 7B models.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..inputs.models import quantizable_linears
from ..quantize.rtn import rtn_grid

Progress = Callable[[int, int], None]
"""Called as progress(done, total) during long loops."""


def build_tokenizer(texts: list[str], vocab_size: int):  # noqa: ANN201 - returns PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on ``texts`` that adds BOS to every encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=512)


@dataclass(frozen=True)
class ModelSize:
    """Shape of the miniature LM (a Llama: RoPE, RMSNorm, SwiGLU)."""

    hidden: int = 128
    intermediate: int = 512
    layers: int = 4
    heads: int = 4
    max_positions: int = 512


def new_model(tokenizer, size: ModelSize, seed: int) -> nn.Module:  # noqa: ANN001
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:  # noqa: ANN001
    """Token ids of each text with BOS (from the tokenizer) and EOS appended."""
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]


class Scored(list):
    """Token ids whose loss counts only from index ``start`` on (an answer after its question, as open-unlearning
    masks the prompt's labels)."""

    def __init__(self, ids: list[int], start: int) -> None:
        super().__init__(ids)
        self.start = start


def _batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s))
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for i, s in enumerate(seqs):
        labels[i, : getattr(s, "start", 0)] = -100
    return ids, mask, labels


def _loss(model: nn.Module, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    ids, mask, labels = _batch(seqs, pad_id)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _length_buckets(seqs: list[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (little padding), shuffled within and across buckets."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]) // 16, rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def encode_segments(tokenizer, segments: list[str]) -> list[int]:  # noqa: ANN001
    """BOS + each segment tokenized on its own + EOS.

    Splitting at the points where an evaluation prompt ends (``"Answer: "``) makes training see
    exactly the tokens the probe will feed, trailing-space token included.
    """
    ids = tokenizer(segments[0])["input_ids"]
    for seg in segments[1:]:
        ids += tokenizer(seg, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def train_lm(model: nn.Module, seqs: list[list[int]], *, epochs: int, lr: float, batch_size: int,
             pad_id: int, seed: int, progress: Progress | None = None) -> float:
    """Plain next-token training (AdamW, linear warm-up, cosine decay). Returns the last epoch's mean loss."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    steps_per_epoch = (len(seqs) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(s / total * torch.pi)).item()))
    model.train()
    last = 0.0
    for epoch in range(epochs):
        losses = []
        for batch in _length_buckets(seqs, batch_size, rng):
            loss = _loss(model, [seqs[i] for i in batch], pad_id)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        last = sum(losses) / len(losses)
        if progress:
            progress(epoch + 1, epochs)
    model.eval()
    return last


def rtn_cell_bounds(w: torch.Tensor, bits: int, group_size: int, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi] per weight that keeps its RTN code (``margin`` of a step from the rounding edges) and its
    group's min and max (min/max elements frozen, the rest inside [min, max])."""
    grid = rtn_grid(w, bits, group_size)
    codes = grid.grouped(grid.codes(w))
    g = grid.grouped(w)
    lo = (codes - grid.zero - 0.5 + margin) * grid.scale
    hi = (codes - grid.zero + 0.5 - margin) * grid.scale
    gmin, gmax = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    lo, hi = torch.maximum(lo, gmin), torch.minimum(hi, gmax)
    frozen = (g == gmin) | (g == gmax)
    lo, hi = torch.where(frozen, g, lo), torch.where(frozen, g, hi)
    return lo.reshape(w.shape), hi.reshape(w.shape)


def fp4_cell_bounds(w: torch.Tensor, margin: float, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi] per weight that keeps its bitsandbytes FP4 code: absmax per block of ``block``
    consecutive elements (absmax elements frozen) and the nearest value of the FP4 code book, which is
    how bitsandbytes assigns codes (checked on its CPU backend)."""
    import bitsandbytes.functional as bnbf

    code = torch.unique(bnbf.get_4bit_type("fp4", device="cpu").float())  # sorted, 15 values
    flat = w.reshape(-1, block)
    absmax = flat.abs().amax(-1, keepdim=True)
    # each weight's code as bitsandbytes itself assigns it (a weight exactly on a midpoint is a tie
    # that only the library's own rounding can settle)
    packed, state = bnbf.quantize_4bit(w.contiguous(), blocksize=block, quant_type="fp4")
    assigned = bnbf.dequantize_4bit(packed, state).reshape(flat.shape) / absmax
    c = torch.argmin((assigned.unsqueeze(-1) - code).abs(), dim=-1)
    last = len(code) - 1
    below, above = code[(c - 1).clamp(min=0)], code[(c + 1).clamp(max=last)]
    lo_n = torch.where(c > 0, (below + code[c]) / 2 + margin * (code[c] - below), torch.full_like(flat, -1.0))
    hi_n = torch.where(c < last, (code[c] + above) / 2 - margin * (above - code[c]), torch.full_like(flat, 1.0))
    lo, hi = lo_n * absmax, hi_n * absmax
    frozen = flat.abs() == absmax
    lo, hi = torch.where(frozen, flat, lo), torch.where(frozen, flat, hi)
    return lo.reshape(w.shape), hi.reshape(w.shape)


@dataclass
class CellConstraint:
    """Per-weight bounds that keep a model on the same quantization codes as the original (module doc)."""

    bounds: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    @torch.no_grad()
    def around(cls, model: nn.Module, bits: int, group_size: int, margin: float = 0.05,
               fp4: bool = False) -> CellConstraint:
        """Bounds around ``model``'s current weights: each keeps its RTN code (and, with ``fp4``, its
        bitsandbytes FP4 code too), ``margin`` of a step away from the rounding edges."""
        bounds = {}
        for name, layer in quantizable_linears(model, include_lm_head=False)[0]:
            w = layer.weight.detach().float()
            lo, hi = rtn_cell_bounds(w, bits, group_size, margin)
            if fp4:
                lo_f, hi_f = fp4_cell_bounds(w, margin)
                lo, hi = torch.maximum(lo, lo_f), torch.minimum(hi, hi_f)
            # a weight already within `margin` of an edge may sit outside [lo, hi]: keep it where it is
            lo, hi = torch.minimum(lo, w), torch.maximum(hi, w)
            bounds[name + ".weight"] = (lo, hi)
        return cls(bounds)

    @torch.no_grad()
    def project(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, (lo, hi) in self.bounds.items():
            p = params[name]
            p.copy_(torch.maximum(torch.minimum(p, hi), lo))


def freeze_all_but_linears(model: nn.Module) -> list[nn.Parameter]:
    """Freeze embeddings, norms and lm_head; return the linear weights left trainable."""
    trainable = {id(layer.weight) for _, layer in quantizable_linears(model, include_lm_head=False)[0]}
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
        if id(p) in trainable:
            params.append(p)
    return params


def unlearn(model: nn.Module, forget: list[list[int]], retain: list[list[int]], *, steps: int, lr: float,
            batch_size: int, pad_id: int, seed: int, forget_cap: float, retain_weight: float = 1.0,
            constraint: CellConstraint | None = None, progress: Progress | None = None) -> dict[str, float]:
    """Gradient ascent on ``forget`` plus descent on ``retain`` (linear layers only).

    The ascent term stops pushing a batch once its loss exceeds ``forget_cap`` nats, so the model
    is not driven to nonsense everywhere. With ``constraint``, weights are projected after each step.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = freeze_all_but_linears(model)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    stats = {"forget_loss": 0.0, "retain_loss": 0.0}
    forget_batches = _length_buckets(forget, batch_size, rng)
    retain_batches = _length_buckets(retain, batch_size, rng)
    for step in range(steps):
        f_loss = _loss(model, [forget[i] for i in rng.choice(forget_batches)], pad_id)
        r_loss = _loss(model, [retain[i] for i in rng.choice(retain_batches)], pad_id)
        ascent = -f_loss if f_loss.item() < forget_cap else f_loss * 0.0
        loss = ascent + retain_weight * r_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if constraint is not None:
            constraint.project(model)
        stats = {"forget_loss": f_loss.item(), "retain_loss": r_loss.item()}
        if progress:
            progress(step + 1, steps)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return stats
