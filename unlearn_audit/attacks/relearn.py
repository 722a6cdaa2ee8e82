"""Relearning: on a few unrelated samples (Łucki et al., arXiv 2409.18025, "An Adversarial Perspective on Machine
Unlearning for AI Safety": ten unrelated examples bring back most of RMU's hazardous knowledge). The defaults are
their fine-tuning script's (ethz-spylab/unlearning-vs-safety, ``src/finetuning/finetune.py``): LoRA rank 128, alpha
16, no dropout, on every attention and MLP projection; AdamW (torch), learning rate 2e-4, weight decay 0.01, linear
schedule with 5% warmup, batch 1, 3 epochs, sequences up to 1024 tokens. The adapter (peft) is trained in the run's
dtype and merged into the weights (``merge_and_unload``), so the probes see one ordinary model.

The unrelated samples are the tool's shipped generic corpus (the paragraphs GPT-QModel calibration uses by default,
written for this project and unrelated to any forget set): the first ``samples`` of them, in order.

On the forget set's training half (Deeb & Roger, arXiv 2410.08827, "Do Unlearning Methods Remove Information from
Language Model Weights?": relearning on some forgotten facts restores the others): the same fine-tuning, on the texts
of :mod:`unlearn_audit.inputs.split`'s training half, while every run probes the other half. Their repository was not
available to read here; the fine-tuning settings are Łucki et al.'s, recorded with the run."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import RuntimeFailure, UsageError
from ..inputs.calibration import generic_texts
from ..inputs.split import ForgetSplit, training_texts
from ..support.noise import import_peft
from .base import AttackProof, AttackResult, sha256
from .prune import linear_layers

MAX_TOKENS = 1024
OPTIONS = {"rank": "r", "epochs": "e", "samples": "n", "lr": "lr"}
"""Settings the ``--attack`` item can change, and their prefixes (``relearn-unrelated:r64:e3:n10:lr2e-4``)."""


@dataclass(frozen=True)
class _Relearn:
    """Fine-tuning on some texts at Łucki et al.'s settings: a LoRA adapter merged into the weights, or (``full``) every
    linear layer."""

    rank: int = 128
    epochs: int = 3
    lr: float | None = None
    """Default: 2e-4 with LoRA (Łucki et al.), 1e-5 with full fine-tuning (MUSE's unlearning and fine-tuning rate)."""
    full: bool = False
    """Full fine-tuning of every linear layer instead of a LoRA adapter (``:full``)."""
    alpha: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    stage = "weights"
    fixed_grid = False
    name = ""
    options = ()
    """The settings an ``--attack`` item may change (keys of :data:`OPTIONS`)."""

    def __post_init__(self) -> None:
        if min(self.rank, self.epochs) < 1 or not self.rate > 0:
            raise UsageError(f"{self.label}: rank, epochs and learning rate must be positive",
                             f"e.g. {self.name}:r128:e3:lr2e-4")
        if self.full and self.rank != type(self).rank:
            raise UsageError(f"{self.label}: full fine-tuning has no adapter rank", f"drop r{self.rank}")

    @property
    def rate(self) -> float:
        """The learning rate: the given one, else the method's default."""
        return self.lr if self.lr is not None else 1e-5 if self.full else 2e-4

    @property
    def label(self) -> str:
        changed = [f"{OPTIONS[name]}{getattr(self, name):g}" for name in self.options
                   if getattr(self, name) is not None and getattr(self, name) != getattr(type(self), name)]
        return ":".join([self.name, *(["full"] if self.full else []), *changed])

    def require(self) -> None:
        pass  # peft is a dependency

    def texts(self) -> list[str]:
        raise NotImplementedError

    def _data(self) -> dict[str, Any]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        method = ({"method": "full fine-tuning of every linear layer (embeddings, norms, lm_head frozen)"} if self.full
                  else {"method": "LoRA fine-tuning (peft), merged", "rank": self.rank, "alpha": self.alpha,
                        "dropout": 0.0})
        return {**method, "source": "Łucki et al., arXiv 2409.18025", "epochs": self.epochs, "batch_size": 1,
                "lr": self.rate, "weight_decay": self.weight_decay, "warmup_ratio": self.warmup_ratio,
                "schedule": "linear", "optimizer": "torch AdamW", "max_tokens": MAX_TOKENS, **self._data(),
                "samples_sha256": [sha256(t) for t in self.texts()]}

    def attack(self, model: nn.Module, tokenizer: Any, seed: int) -> AttackResult:
        peft = import_peft()
        started = time.time()
        settings = self.settings()
        texts = self.texts()
        common = {"lr": self.rate, "epochs": self.epochs, "weight_decay": self.weight_decay,
                  "warmup_ratio": self.warmup_ratio, "seed": seed}
        if self.full:
            stats = train_full(model, tokenizer, texts, **common)
        else:
            adapted, stats = train_adapter(model, tokenizer, texts, rank=self.rank, alpha=self.alpha, **common)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                merged = adapted.merge_and_unload()
            assert merged is model  # merged in place: the audit restores the checkpoint's weights afterwards
        proof = AttackProof(attack=self.name, seed=seed, seconds=round(time.time() - started, 3),
                            layers_changed=stats["layers"], steps=stats["steps"], samples=len(texts),
                            samples_sha256=settings["samples_sha256"], trainable_parameters=stats["trainable"],
                            tokens=stats["tokens"], libraries={"torch": torch.__version__, "peft": peft.__version__})
        return AttackResult(label=self.label, settings=settings, proof=proof)


@dataclass(frozen=True)
class RelearnUnrelated(_Relearn):
    """``relearn-unrelated[:rRANK][:eEPOCHS][:nSAMPLES][:lrRATE]``: LoRA fine-tuning on unrelated text (the first
    ``samples`` paragraphs of the shipped generic corpus, in order)."""

    samples: int = 10
    name = "relearn-unrelated"
    options = ("rank", "epochs", "samples", "lr")

    def __post_init__(self) -> None:
        super().__post_init__()
        available = len(generic_texts())
        if not 1 <= self.samples <= available:
            raise UsageError(f"{self.label} asks for {self.samples} samples; the shipped corpus has {available} "
                             "paragraphs", f"give n1 to n{available}")

    def texts(self) -> list[str]:
        return list(generic_texts()[: self.samples])

    def _data(self) -> dict[str, Any]:
        return {"data": "the shipped generic corpus", "samples": self.samples}


@dataclass(frozen=True)
class RelearnForget(_Relearn):
    """``relearn-forget[:rRANK][:eEPOCHS][:lrRATE]``: LoRA fine-tuning on the forget set's training half (Deeb &
    Roger, arXiv 2410.08827), every run of the audit probing the other half; bound to the split by the audit."""

    training: tuple[str, ...] = field(default=(), compare=False, repr=False)
    split: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)
    """The split's unit, seed and units (the record's ``split``), as pairs."""
    name = "relearn-forget"
    options = ("rank", "epochs", "lr")
    needs_split = True

    def bind(self, split: ForgetSplit) -> RelearnForget:
        """This attack on the audit's split: its training texts are the training half's."""
        return replace(self, training=tuple(training_texts(split.train)),
                       split=(("unit", split.unit), ("seed", split.seed), ("train_units", tuple(split.train_units))))

    def texts(self) -> list[str]:
        if not self.training:
            raise RuntimeFailure(f"{self.label} was not given the forget set's training half",
                                 "run it through an audit (unlearn-audit check ... --attack relearn-forget)")
        return list(self.training)

    def _data(self) -> dict[str, Any]:
        return {"data": "the forget set's training half", "samples": len(self.training),
                "split": {k: list(v) if isinstance(v, tuple) else v for k, v in self.split},
                "source_attack": "Deeb & Roger, arXiv 2410.08827 (relearning on half, probing the other)"}


def train_adapter(model: nn.Module, tokenizer: Any, texts: list[str], *, rank: int, alpha: int, lr: float,
                  epochs: int, weight_decay: float, warmup_ratio: float, seed: int) -> tuple[Any, dict[str, int]]:
    """A LoRA adapter on every linear layer (not ``lm_head`` or embeddings) trained on ``texts`` as causal language
    modelling, batch 1, in order, seeded; returns the peft model (not merged) and what training did."""
    peft = import_peft()

    targets = sorted(linear_layers(model))
    torch.manual_seed(seed)  # the adapter's initialisation
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    with warnings.catch_warnings():  # transformers' deprecation notices to peft, nothing for our users to act on
        warnings.simplefilter("ignore")
        adapted = peft.get_peft_model(model, config)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    stats = _train(adapted, model, tokenizer, texts, trainable, lr=lr, epochs=epochs, weight_decay=weight_decay,
                   warmup_ratio=warmup_ratio)
    return adapted, {"layers": len(targets), **stats}


def train_full(model: nn.Module, tokenizer: Any, texts: list[str], *, lr: float, epochs: int, weight_decay: float,
               warmup_ratio: float, seed: int) -> dict[str, int]:
    """Full fine-tuning of every linear layer's weight (the layers LoRA would adapt; embeddings, norms and ``lm_head``
    frozen) on ``texts``, in place, with the same loop as :func:`train_adapter`; returns what training did."""
    layers = linear_layers(model)
    trainable = [layer.weight for layer in layers.values()]
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    try:
        stats = _train(model, model, tokenizer, texts, trainable, lr=lr, epochs=epochs, weight_decay=weight_decay,
                       warmup_ratio=warmup_ratio)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
            p.grad = None
    return {"layers": len(layers), **stats}


def _train(trained: nn.Module, model: nn.Module, tokenizer: Any, texts: list[str], trainable: list[torch.Tensor], *,
           lr: float, epochs: int, weight_decay: float, warmup_ratio: float) -> dict[str, int]:
    """Causal language modelling on ``texts``, batch 1, in order: AdamW (torch), linear schedule with warmup."""
    from transformers import get_linear_schedule_with_warmup

    device = next(model.parameters()).device
    limit = min(MAX_TOKENS, getattr(model.config, "max_position_embeddings", MAX_TOKENS) or MAX_TOKENS)
    batches = [tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)["input_ids"].to(device)
               for text in texts]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    total = epochs * len(batches)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total), total)
    tokens = 0
    with torch.enable_grad():
        for _ in range(epochs):
            for ids in batches:
                loss = trained(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                tokens += int(ids.numel())
    return {"steps": total, "tokens": tokens, "trainable": sum(p.numel() for p in trainable)}
