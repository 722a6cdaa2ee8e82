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
* ``npo_gdr``: ``npo + alpha * NLL(retain)``;
* ``npo_klr``: ``npo + alpha * KL(original || model)`` on the retain batch (the quantization paper's sixth method).

**SURE** (Zhang et al., arXiv 2410.16454, Sec. 6; ``Recipe(sure=90)``) on any of them: each step, the gradient of the
forget loss alone gives every output row of every parameter a saliency (the L2 norm of its gradient over the other
dimensions; one entry each of a 1-D parameter), the ``sure``-th percentile of all of them over the whole model
(``numpy.percentile``, linear) is the threshold, and only the rows at or above it are updated by the whole loss's
gradient (the others' gradients are zeroed after clipping, before the optimizer step, so AdamW's moments of a frozen row
stay and decay). As the paper describes it. The released trainer (zzwjames/FailureLLMUnlearning,
``baselines/baselines/iterative.py``, class ``SURE``) computes the same mask but applies it in an overridden
``optimizer_step``, a method transformers' Trainer of that time does not call (its loop calls ``optimizer.step()``), and
its first ``backward`` of the forget loss is kept, so the released runs, as read, updated every row with the forget
gradient counted twice. That is not what runs here.

``form="paper"`` computes the losses as the paper's released ``iterative.py`` does (MUSE's): NPO on the raw logits,
element by element (``-(2/beta) * mean(logsigmoid(beta * (ref_logits - logits)))``), the KLR term as
``kl_div(logits, ref_logits, reduction="batchmean", log_target=True)`` on the raw logits, and under SURE its own KL
(``kl_div(log_softmax(logits), softmax(ref_logits), reduction="batchmean")``: summed over positions, divided by the
batch). Means are taken over the batch's real (unpadded) positions: the paper's chunks are all 2,048 tokens, ours are
padded. The default ``form="open-unlearning"`` is the sequence-level NPO and per-position KL below.

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
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from .train import _batch

METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")
"""The methods :func:`unlearn_with` runs (MUSE's and open-unlearning's names, lower case)."""
DTYPES = ("float32", "bfloat16")
FORMS = ("open-unlearning", "paper")
"""How the NPO and KL terms are computed: open-unlearning's sequence-level forms, or the paper's released code's."""


@dataclass(frozen=True)
class Recipe:
    """One unlearning run's settings (defaults: MUSE's News script and open-unlearning's MUSE trainer)."""

    method: str
    lr: float = 1e-5
    epochs: int = 10
    batch_size: int = 4
    dtype: str = "float32"
    """``float32`` or ``bfloat16`` (the weights and AdamW's moments are held and updated in it, no float32 copy)."""
    beta: float = 0.1
    """NPO's inverse temperature."""
    alpha: float = 1.0
    """Weight of the retain term (GDR, KLR)."""
    max_grad_norm: float = 1.0
    seed: int = 0
    steps: int | None = None
    """Optimizer steps in all (epochs repeat as needed); ``None``: ``epochs`` passes over the forget set."""
    sure: float | None = None
    """SURE's percentile threshold (90: the top 10% of output rows by forget-gradient norm are updated); ``None``: off."""
    form: str = "open-unlearning"
    """``open-unlearning`` or ``paper`` (the NPO and KL terms as the paper's released code computes them)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown unlearning method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown training dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.form not in FORMS:
            raise ValueError(f"unknown loss form {self.form!r}; use one of {', '.join(FORMS)}")
        if self.sure is not None and not 0 <= self.sure < 100:
            raise ValueError(f"SURE threshold {self.sure} is not a percentile in [0, 100)")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be positive, not {self.steps}")

    @property
    def name(self) -> str:
        """A repo-friendly name: ``ga_gdr-lr1e-05-bf16``, ``npo_klr-sure90-lr5e-05-bf16-s1000-b2-paper``."""
        rate = f"{self.lr:.1e}".replace(".0e", "e")  # 1e-04, 1.5e-04
        sure = "" if self.sure is None else f"-sure{self.sure:g}"
        tail = "".join([f"-s{self.steps}" if self.steps else "", f"-b{self.batch_size}" if self.steps else "",
                        "-paper" if self.form == "paper" else ""])
        return f"{self.method}{sure}-lr{rate}-{'bf16' if self.dtype == 'bfloat16' else 'fp32'}{tail}"

    def total_steps(self, n_forget: int) -> int:
        """The run's optimizer steps over a forget set of ``n_forget`` sequences."""
        return self.steps or self.epochs * -(-n_forget // self.batch_size)

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
                "schedule": "constant, no warm-up", "trained": "every parameter",
                "optimizer_state_dtype": self.dtype}


def sequence_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each sequence (labels -100 left out), computed in float32."""
    return _sequence_nll(model(input_ids=ids, attention_mask=mask).logits.float(), labels)


def _sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
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


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits.float()


def paper_kl(model: nn.Module, reference: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *,
             sure: bool) -> torch.Tensor:
    """The paper's released KLR term over the real positions, divided by the batch size (``batchmean``): MUSE's
    ``kl_div(logits, ref_logits, log_target=True)`` on the raw logits, or under SURE ``kl_div(log_softmax(logits),
    softmax(ref_logits))``."""
    logits = _logits(model, ids, mask)
    with torch.no_grad():
        ref = _logits(reference, ids, mask)
    if sure:
        logits, ref = F.log_softmax(logits, dim=-1), F.log_softmax(ref, dim=-1)
    per_element = F.kl_div(logits, ref, reduction="none", log_target=True)
    return per_element[mask.bool()].sum() / ids.shape[0]


def paper_npo(logits: torch.Tensor, reference: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
              beta: float) -> torch.Tensor:
    """The paper's released NPO: ``-(2/beta) * mean(logsigmoid(beta * (ref_logits - logits)))`` over every logit of
    the real positions."""
    with torch.no_grad():
        ref = _logits(reference, ids, mask)
    return -(2.0 / beta) * F.logsigmoid(beta * (ref - logits))[mask.bool()].mean()


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


def forget_loss(recipe: Recipe, model: nn.Module, reference: nn.Module | None,
                forget: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
    """The forget term of the method's loss and the forget batch's mean NLL (logged, from the same forward pass)."""
    logits = _logits(model, *forget[:2])
    nll = _sequence_nll(logits, forget[2])
    forget_nll = float(_per_token(nll.detach(), forget[2]))
    if not recipe.method.startswith("npo"):
        return -_per_token(nll, forget[2]), forget_nll
    if recipe.form == "paper":
        return paper_npo(logits, reference, *forget[:2], recipe.beta), forget_nll
    return _npo(nll, reference, *forget, recipe.beta), forget_nll


def retain_loss(recipe: Recipe, model: nn.Module, reference: nn.Module | None,
                retain: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The retain term (GDR's NLL or KLR's KL, times ``alpha``), or ``None`` for GA and NPO."""
    if recipe.method.endswith("_gdr"):
        return recipe.alpha * mean_nll(model, *retain)
    if recipe.method.endswith("_klr"):
        if recipe.form == "paper":
            return recipe.alpha * paper_kl(model, reference, *retain[:2], sure=recipe.sure is not None)
        return recipe.alpha * kl_to_reference(model, reference, *retain[:2])
    return None


def method_loss(recipe: Recipe, model: nn.Module, reference: nn.Module | None,
                forget: tuple[torch.Tensor, ...], retain: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
    """The method's loss on one forget batch and its retain batch, and the forget batch's mean NLL."""
    loss, forget_nll = forget_loss(recipe, model, reference, forget)
    kept = retain_loss(recipe, model, reference, retain)
    return (loss if kept is None else loss + kept), forget_nll


def saliency_mask(model: nn.Module, percentile: float) -> dict[str, torch.Tensor]:
    """SURE's mask from the gradients now in ``model``: per parameter, a boolean per output row (the first dimension;
    one per entry of a 1-D parameter) whose gradient's L2 norm over the other dimensions is at or above the
    ``percentile``-th percentile of all rows of the model."""
    norms = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().float()
        norms[name] = g.flatten(1).norm(dim=1) if g.dim() > 1 else g.abs()
    gamma = np.percentile(torch.cat(list(norms.values())).numpy(), percentile)
    return {name: n >= float(gamma) for name, n in norms.items()}


def _apply_mask(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        keep = mask.get(name)
        if keep is None:
            p.grad.zero_()
        else:
            p.grad.mul_(keep.to(p.grad.dtype).view(-1, *([1] * (p.grad.dim() - 1))))


def schedule(recipe: Recipe, n_forget: int) -> list[list[int]]:
    """Every step's forget indices, drawn once from the recipe's seed: each epoch a fresh shuffle, cut into batches;
    a run of ``steps`` takes the first ``steps`` of as many epochs as it needs (so a run resumed at step k takes the
    same batches an uninterrupted one does)."""
    rng = random.Random(recipe.seed)
    total, out = recipe.total_steps(n_forget), []
    while len(out) < total:
        order = list(range(n_forget))
        rng.shuffle(order)
        out += [order[i:i + recipe.batch_size] for i in range(0, n_forget, recipe.batch_size)]
    return out[:total]


Progress = Callable[[int, int], None]


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """The run so far, written whole or not at all (a temporary name, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.with_name(path.name + ".partial")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, work)
    os.replace(work, path)


def unlearn_with(original: nn.Module, recipe: Recipe, forget: list[list[int]], retain: list[list[int]], *,
                 pad_id: int, progress: Progress | None = None, checkpoint: Path | None = None,
                 checkpoint_every: int = 50, stop_after: int | None = None) -> tuple[nn.Module, dict[str, object]]:
    """Run ``recipe`` on a copy of ``original`` (left unchanged); returns the unlearned model (in the recipe's dtype)
    and a log: steps, seconds, the forget NLL of the first and last step, SURE's updated share of rows.

    With ``checkpoint`` (a file), the model, AdamW's state and the step are saved there every ``checkpoint_every``
    steps and a run finding one for the same recipe goes on from it: the result equals an uninterrupted run's (the
    batches come from :func:`schedule`; nothing else draws random numbers). ``stop_after`` ends the run after that
    many steps in all (for tests of the resume), saving the checkpoint first."""
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
    steps = schedule(recipe, len(forget))
    state = {"recipe": recipe.describe(), "step": 0, "first": None, "last": None, "seconds": 0.0, "salient": []}
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)
        if saved["recipe"] == state["recipe"]:
            model.load_state_dict(saved.pop("model"))
            opt.load_state_dict(saved.pop("optimizer"))
            state = saved
    resumed_at = state["step"]
    model.train()
    started = time.time() - state["seconds"]
    for step in range(state["step"], len(steps)):
        chosen = steps[step]
        f_batch = _batch([forget[i] for i in chosen], pad_id)
        r_batch = _batch([retain[i % len(retain)] for i in chosen], pad_id)
        opt.zero_grad()
        f_loss, forget_nll = forget_loss(recipe, model, reference, f_batch)
        mask = None
        if recipe.sure is not None:
            f_loss.backward()
            mask = saliency_mask(model, recipe.sure)
            state["salient"].append(float(sum(int(m.sum()) for m in mask.values())
                                          / sum(m.numel() for m in mask.values())))
            r_loss = retain_loss(recipe, model, reference, r_batch)
            if r_loss is not None:
                r_loss.backward()  # adds to the forget gradient: the whole loss's gradient
        else:
            r_loss = retain_loss(recipe, model, reference, r_batch)
            (f_loss if r_loss is None else f_loss + r_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        if mask is not None:
            _apply_mask(model, mask)
        opt.step()
        state["step"] = step + 1
        state["first"] = forget_nll if state["first"] is None else state["first"]
        state["last"] = forget_nll
        if progress:
            progress(step + 1, len(steps))
        done = state["step"] == len(steps) or state["step"] == stop_after
        if checkpoint is not None and (state["step"] % checkpoint_every == 0 or done):
            state["seconds"] = time.time() - started
            _save_state(checkpoint, model, opt, state)
        if state["step"] == stop_after:
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log: dict[str, object] = {"recipe": recipe.describe(), "steps": state["step"],
                              "seconds": round(time.time() - started, 1), "resumed_at_step": resumed_at,
                              "forget_nll_first_step": state["first"], "forget_nll_last_step": state["last"]}
    if state["salient"]:
        log["sure_updated_row_share"] = round(float(np.mean(state["salient"])), 4)
    return model, log
