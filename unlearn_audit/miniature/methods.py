"""The published unlearning methods, run as their reference code runs them: real unlearned checkpoints.

The planted ``fragile`` checkpoint is a constructed worst case (kept inside the original's quantization cells by a
projection no real method makes). The checkpoints made here come from the losses and training set-up of MUSE's
``baselines/iterative.py`` and open-unlearning's ``src/trainer/unlearn/`` (read, not copied):

* ``ga``: gradient ascent, ``-NLL(forget)``;
* ``ga_gdr``: ``-NLL(forget) + alpha * NLL(retain)``;
* ``ga_klr``: ``-NLL(forget) + alpha * KL(original || model)`` on the retain batch (per token, the frozen original
  as the target, as open-unlearning's ``compute_kl_divergence``);
* ``npo``: negative preference optimisation, ``-(2 / beta) * mean(log sigmoid(beta * (NLL_model - NLL_original)))``
  over the forget sequences (summed token NLL per sequence, open-unlearning's ``compute_dpo_loss`` with no winning
  side; ``beta`` 0.1);
* ``npo_gdr``: ``npo + alpha * NLL(retain)``.

Training as both references set it: every parameter trained, AdamW (betas 0.9/0.999, eps 1e-8, no weight decay),
a constant learning rate without warm-up, gradient norm clipped at 1.0 (the Trainer's default), one retain batch
beside each forget batch (retain item ``i mod len(retain)``), 10 epochs. ``dtype="bfloat16"`` holds the weights in
bfloat16 and updates them there, as both references do (``torch_dtype: bfloat16`` with ``bf16: true``): an AdamW step
smaller than half a bfloat16 unit in the last place of a weight rounds back to the weight, so at a learning rate of
1e-5 only weights below about 2.6e-3 in magnitude can move at all. ``float32`` trains in float32.

Differences from MUSE's own code, named: MUSE computes NPO and the KL term on the raw logits, element by element
(``logsigmoid(beta * (ref_logits - logits))``, ``kl_div(logits, ref_logits, log_target=True)``); open-unlearning and
the NPO paper use sequence log-likelihoods and log-softmax, as here. Padding positions are left out of the KL mean.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .train import _batch

METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr")
"""The methods :func:`unlearn_with` runs (MUSE's and open-unlearning's names, lower case)."""
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Recipe:
    """One unlearning run's settings (defaults: MUSE's News script and open-unlearning's MUSE trainer)."""

    method: str
    lr: float = 1e-5
    epochs: int = 10
    batch_size: int = 4
    dtype: str = "float32"
    """``float32`` or ``bfloat16`` (the weights are held and updated in it)."""
    beta: float = 0.1
    """NPO's inverse temperature."""
    alpha: float = 1.0
    """Weight of the retain term (GDR, KLR)."""
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown unlearning method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown training dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")

    @property
    def name(self) -> str:
        """A repo-friendly name: ``ga_gdr-lr1e-05-bf16``."""
        rate = f"{self.lr:.1e}".replace(".0e", "e")  # 1e-04, 1.5e-04
        return f"{self.method}-lr{rate}-{'bf16' if self.dtype == 'bfloat16' else 'fp32'}"

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
                "schedule": "constant, no warm-up", "trained": "every parameter"}


def sequence_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each sequence (labels -100 left out), computed in float32."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return nll.sum(dim=-1)


def _per_token(total: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A batch's summed NLL as the mean per scored token."""
    return total.sum() / (labels[:, 1:] != -100).sum().clamp(min=1)


def mean_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL per scored token over the batch (what ``model(labels=...).loss`` returns)."""
    return _per_token(sequence_nll(model, ids, mask, labels), labels)


def kl_to_reference(model: nn.Module, reference: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions, averaged over the batch's real positions."""
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    with torch.no_grad():
        ref = F.log_softmax(reference(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    per_position = F.kl_div(logp, ref, reduction="none", log_target=True).sum(dim=-1)
    real = mask.bool()
    return per_position[real].mean()


def _npo(nll: torch.Tensor, reference: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
         beta: float) -> torch.Tensor:
    """NPO from the model's summed NLL per sequence ``nll`` and the frozen reference's on the same batch."""
    with torch.no_grad():
        ref_nll = sequence_nll(reference, ids, mask, labels)
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll)).mean()


def npo_loss(model: nn.Module, reference: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             beta: float) -> torch.Tensor:
    """open-unlearning's NPO: ``-(2/beta) * mean log sigmoid(beta * (NLL_model - NLL_reference))`` per sequence."""
    return _npo(sequence_nll(model, ids, mask, labels), reference, ids, mask, labels, beta)


def method_loss(recipe: Recipe, model: nn.Module, reference: nn.Module | None,
                forget: tuple[torch.Tensor, ...], retain: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
    """The method's loss on one forget batch and its retain batch, and the forget batch's mean NLL (logged, from the
    same forward pass)."""
    method = recipe.method
    nll = sequence_nll(model, *forget)
    forget_nll = float(_per_token(nll.detach(), forget[2]))
    if method.startswith("npo"):
        loss = _npo(nll, reference, *forget, recipe.beta)
    else:
        loss = -_per_token(nll, forget[2])
    if method.endswith("_gdr"):
        loss = loss + recipe.alpha * mean_nll(model, *retain)
    elif method.endswith("_klr"):
        loss = loss + recipe.alpha * kl_to_reference(model, reference, *retain[:2])
    return loss, forget_nll


Progress = Callable[[int, int], None]


def unlearn_with(original: nn.Module, recipe: Recipe, forget: list[list[int]], retain: list[list[int]], *,
                 pad_id: int, progress: Progress | None = None) -> tuple[nn.Module, dict[str, object]]:
    """Run ``recipe`` on a copy of ``original`` (left unchanged); returns the unlearned model (in the recipe's dtype)
    and a log: steps, seconds, the forget NLL of the first and last step."""
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    dtype = getattr(torch, recipe.dtype)
    model = copy.deepcopy(original).to(dtype)
    needs_reference = recipe.method.startswith("npo") or recipe.method.endswith("_klr")
    reference = copy.deepcopy(model).eval() if needs_reference else None
    if reference is not None:
        for p in reference.parameters():
            p.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    per_epoch = -(-len(forget) // recipe.batch_size)
    total = recipe.epochs * per_epoch
    model.train()
    started, step, first, last = time.time(), 0, None, None
    for _ in range(recipe.epochs):
        order = list(range(len(forget)))
        rng.shuffle(order)
        for start in range(0, len(order), recipe.batch_size):
            chosen = order[start:start + recipe.batch_size]
            f_batch = _batch([forget[i] for i in chosen], pad_id)
            r_batch = _batch([retain[i % len(retain)] for i in chosen], pad_id)
            loss, forget_nll = method_loss(recipe, model, reference, f_batch, r_batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            opt.step()
            step += 1
            first = forget_nll if first is None else first
            last = forget_nll
            if progress:
                progress(step, total)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"recipe": recipe.describe(), "steps": step, "seconds": round(time.time() - started, 1),
                   "forget_nll_first_step": first, "forget_nll_last_step": last}
