"""The loss screen: a fast functional check, one forward pass per text and no generation.

For each model and variant, the teacher-forced loss (mean negative log-likelihood per scored token, in nats) of
the forget texts and, where the benchmark has them, of held-out texts of the same kind (the floor: what a model's
loss is on text it never saw). The texts are the ones the benchmark's own probes score, tokenised as they are:

* MUSE: PrivLeak's ``forget`` and ``holdout`` texts, with BOS as MUSE tokenises, every token after the first scored
  (PrivLeak's ``loss``); a text longer than the model's context keeps its start (counted as truncated);
* TOFU: each forget question's answer after open-unlearning's prompt (TOFU's ``avg_loss``, whose ``exp(-x)`` is the
  answer probability); no held-out set is read;
* WMDP: the right answer's letter after lm-evaluation-harness's prompt; no held-out set.

Recovery on loss is ``(L(Q(u)) - L(u)) / (L(o) - L(u))``, net of the reference model's own move under the same
variant, with paired bootstrap intervals (:mod:`unlearn_audit.analysis.figures`): the same shares as every metric's.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..engines.base import Advance
from ..engines.base import InferenceEngine as Engine
from ..inputs.data import ForgetData
from .base import ItemScore, ProbeOutput

Pair = tuple[list[int], list[int]]


def _text_pairs(engine: Engine, texts: list[str]) -> list[Pair]:
    """(first token, the rest) of each text, tokenised with special tokens and cut to the model's context."""
    limit = getattr(engine, "context", None)
    pairs = []
    for ids in engine.tokenizer(texts)["input_ids"]:
        if limit is not None and len(ids) > limit:
            engine.truncated["score"] += 1
            ids = ids[:limit]
        pairs.append((ids[:1], ids[1:]))
    return pairs


def pairs(engine: Engine, data: ForgetData, part: str, settings: Any) -> list[Pair]:
    """The (context, scored tokens) pairs of ``part`` (``forget`` or ``holdout``) for ``data``'s benchmark."""
    if data.benchmark == "tofu":
        from ..inputs.spec import TofuSpec
        from .tofu import Template

        if part != "forget":
            return []
        items = data.tofu["forget"]
        template = Template(engine.tokenizer, SimpleNamespace(**(settings.tofu or TofuSpec().model_dump())),
                            settings.chat_template)
        return [template.pair(q, a) for q, a in zip(items.questions, items.answers)]
    if data.benchmark == "wmdp":
        from .wmdp import LETTERS, context, encode_pair

        if part != "forget" or data.wmdp is None:
            return []
        items = data.wmdp
        return [encode_pair(engine.tokenizer, context(q, c, s), " " + LETTERS[a], settings.lm_eval)
                for q, c, s, a in zip(items.questions, items.choices, items.subjects, items.answers)]
    return _text_pairs(engine, data.privleak_forget if part == "forget" else data.privleak_holdout)


def count(data: ForgetData, part: str) -> int:
    """How many texts the screen scores in ``part`` (without tokenising)."""
    if data.benchmark == "tofu":
        return len(data.tofu["forget"].questions) if part == "forget" and "forget" in data.tofu else 0
    if data.benchmark == "wmdp":
        return len(data.wmdp.questions) if part == "forget" and data.wmdp is not None else 0
    return len(data.privleak_forget if part == "forget" else data.privleak_holdout)


def screen(engine: Engine, pairs_: list[Pair], metric: str, advance: Advance | None = None) -> ProbeOutput:
    """Item score = the mean NLL of the scored tokens (nats); ``extra`` keeps their count."""
    logprobs = engine.continuation_logprobs(pairs_, advance)
    items = [ItemScore(f"{metric}/{i}", float(-lp.mean()) if len(lp) else math.nan,
                       extra={"tokens": int(len(lp)), "nll_sum": float(-np.sum(lp))})
             for i, lp in enumerate(logprobs)]
    return ProbeOutput(metric, "mean", items, {"score": "mean negative log-likelihood per scored token (nats)",
                                               "forward_passes": len(pairs_)})
