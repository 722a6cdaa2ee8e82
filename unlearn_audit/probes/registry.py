"""Probes behind one interface: a registry, as for quantizers and engines.

Each registered probe names the metric its output carries, how its items combine (``mean`` of item scores or
the ``auc`` of forget against holdout items), which fields of the forget data it reads, and how many items it
will probe (for progress). An audit runs every registered probe whose data is present, in registration order.
The loss screen comes first in every benchmark; ``tests/test_probe_contract.py`` runs the contract over every
registered probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ..inputs.data import ForgetData
from ..inputs.spec import TofuSpec
from . import muse, screen, tofu, wmdp
from .base import ProbeOutput


@dataclass(frozen=True)
class ProbeInfo:
    """A registered probe."""

    name: str
    """The metric its output carries (``ProbeOutput.metric``) and the record's key for it."""
    kind: str
    """``mean`` (mean item score × 100) or ``auc`` (AUC × 100 of forget against holdout items)."""
    summary: str
    needs: tuple[str, ...]
    """The :class:`~unlearn_audit.inputs.data.ForgetData` fields it reads."""
    count: Callable[[ForgetData], int]
    """How many items it probes on ``data`` (an optional probe with none does not run)."""
    run: Callable[[Any, ForgetData, Any, Any], ProbeOutput]
    """``run(engine, data, probe_settings, advance)``."""
    required: bool = True
    """An audit needs it (its data missing is an error elsewhere); optional probes run when their data is there."""
    benchmark: str = "muse"
    """The spec's ``benchmark`` it belongs to (``muse``, ``tofu``, ``wmdp``), or ``all``."""
    score_range: tuple[float, float] = (0.0, 1.0)
    """The range every item score lies in (ROUGE, accuracy: [0, 1]; a loss in nats: [0, inf))."""

    def available(self, data: ForgetData) -> bool:
        """Whether it runs on ``data``: one of its benchmark's probes, required or with items."""
        return self.benchmark in (data.benchmark, "all") and (self.required or self.count(data) > 0)


def _screen(part: str, metric: str) -> Callable[[Any, ForgetData, Any, Any], ProbeOutput]:
    def run(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
        return screen.screen(engine, screen.pairs(engine, data, part, s), metric, advance)
    return run


def _verbmem_f(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
    return muse.verbmem(engine, data.verbmem_prompts, data.verbmem_refs, s.verbmem_max_new_tokens, advance,
                        stemmer=s.rouge_stemmer)


def _knowmem(metric: str) -> Callable[[Any, ForgetData, Any, Any], ProbeOutput]:
    def run(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
        qa = data.knowmem_forget if metric == "knowmem_f" else data.knowmem_retain
        return muse.knowmem(engine, qa, metric, s.knowmem_max_new_tokens, advance, stemmer=s.rouge_stemmer,
                            chat_template=s.chat_template)
    return run


def _privleak(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
    return muse.privleak(engine, data.privleak_forget, data.privleak_holdout, s.minkprob_k, advance,
                         at_least_one=s.mink_at_least_one)


def _verbmem_h(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
    return muse.verbmem(engine, data.holdout_prompts, data.holdout_refs, s.verbmem_max_new_tokens, advance,
                        stemmer=s.rouge_stemmer, metric="verbmem_h")


def _tofu(part: str) -> Callable[[Any, ForgetData, Any, Any], ProbeOutput]:
    def run(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
        settings = SimpleNamespace(**(s.tofu or TofuSpec().model_dump()))
        return tofu.probe(engine, data.tofu[part], tofu.SETS[part], settings, s.chat_template, advance)
    return run


def _tofu_count(part: str) -> Callable[[ForgetData], int]:
    return lambda d: tofu.count(d.tofu[part]) if part in d.tofu else 0


def _choices(part: str) -> Callable[[Any, ForgetData, Any, Any], ProbeOutput]:
    def run(engine: Any, data: ForgetData, s: Any, advance: Any) -> ProbeOutput:
        return wmdp.probe(engine, getattr(data, part), f"{part}_acc", advance, lm_eval=s.lm_eval)
    return run


def _choices_count(part: str) -> Callable[[ForgetData], int]:
    return lambda d: len(getattr(d, part).questions) if getattr(d, part) is not None else 0


_TOFU_SUMMARY = ("greedy answer, ROUGE-L recall; answer probability; truth ratio of paraphrased against perturbed "
                 "answers (open-unlearning's TOFU metrics)")

SCREEN = ("screen_f", "screen_h")
"""The loss screen's probes (``unlearn-audit screen`` runs these alone)."""

PROBES: dict[str, ProbeInfo] = {info.name: info for info in (
    ProbeInfo("screen_f", "mean", "Loss screen: mean token NLL of the forget texts (MUSE: PrivLeak's forget texts; "
              "TOFU: the forget answers; WMDP: the right letters), one forward pass each, no generation", (),
              lambda d: screen.count(d, "forget"), _screen("forget", "screen_f"), benchmark="all",
              score_range=(0.0, float("inf"))),
    ProbeInfo("screen_h", "mean", "Loss screen on held-out texts of the same kind (MUSE: PrivLeak's holdout texts): "
              "the floor the forget loss is read against", (), lambda d: screen.count(d, "holdout"),
              _screen("holdout", "screen_h"), required=False, benchmark="all", score_range=(0.0, float("inf"))),
    ProbeInfo("verbmem_f", "mean", "MUSE VerbMem: greedy continuation of each forget prompt, ROUGE-L F1 against the "
              "reference's first 128 tokens", ("verbmem_prompts", "verbmem_refs"),
              lambda d: len(d.verbmem_prompts), _verbmem_f),
    ProbeInfo("knowmem_f", "mean", "MUSE KnowMem on the forget QA: few-shot question, greedy answer cut at the stops, "
              "ROUGE-L F1", ("knowmem_forget",), lambda d: len(d.knowmem_forget.questions), _knowmem("knowmem_f")),
    ProbeInfo("knowmem_r", "mean", "MUSE KnowMem on the retain QA (utility)", ("knowmem_retain",),
              lambda d: len(d.knowmem_retain.questions), _knowmem("knowmem_r")),
    ProbeInfo("privleak", "auc", "MUSE PrivLeak: Min-K% (k=0.4) of forget and holdout texts, AUC; Min-K%++, zlib and "
              "loss beside it", ("privleak_forget", "privleak_holdout"),
              lambda d: len(d.privleak_forget) + len(d.privleak_holdout), _privleak, score_range=(0.0, float("inf"))),
    ProbeInfo("verbmem_h", "mean", "VerbMem on held-out text the models never saw: the floor VerbMem must beat",
              ("holdout_prompts", "holdout_refs"), lambda d: len(d.holdout_prompts), _verbmem_h, required=False),
    ProbeInfo("tofu_f", "mean", "TOFU forget set: " + _TOFU_SUMMARY, ("tofu",), _tofu_count("forget"),
              _tofu("forget"), benchmark="tofu"),
    ProbeInfo("tofu_r", "mean", "TOFU retain set (utility): " + _TOFU_SUMMARY, ("tofu",), _tofu_count("retain"),
              _tofu("retain"), required=False, benchmark="tofu"),
    ProbeInfo("tofu_ra", "mean", "TOFU real authors (utility): ROUGE-L recall, probability normalised over the "
              "options, truth ratio", ("tofu",), _tofu_count("real_authors"), _tofu("real_authors"), required=False,
              benchmark="tofu"),
    ProbeInfo("tofu_wf", "mean", "TOFU world facts (utility): as real authors", ("tofu",), _tofu_count("world_facts"),
              _tofu("world_facts"), required=False, benchmark="tofu"),
    ProbeInfo("wmdp_acc", "mean", "WMDP: zero-shot four-choice accuracy by the answer letters' log-likelihood "
              "(lm-evaluation-harness's prompt)", ("wmdp",), _choices_count("wmdp"), _choices("wmdp"),
              benchmark="wmdp"),
    ProbeInfo("mmlu_acc", "mean", "MMLU subjects (WMDP's utility set), scored as WMDP", ("mmlu",),
              _choices_count("mmlu"), _choices("mmlu"), required=False, benchmark="wmdp"),
)}
"""Every probe, in the order an audit runs them."""


def probes_for(data: ForgetData, only: tuple[str, ...] | None = None) -> list[ProbeInfo]:
    """The registered probes ``data`` can feed, in order (only those named in ``only``, when given)."""
    return [info for info in PROBES.values() if info.available(data) and (only is None or info.name in only)]
