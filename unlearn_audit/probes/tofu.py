"""TOFU's probes, as open-unlearning evaluates TOFU (``configs/eval/tofu.yaml`` and its ``tofu_metrics``).

Each question is wrapped as open-unlearning's ``preprocess_chat_instance`` wraps it: without a chat template,
``{user_start_tag}{question}{user_end_tag}{asst_start_tag}`` (base models: ``"Question: {q}\\nAnswer: "``); with one,
the tokenizer's chat template over a system turn (``system_prompt``), the user's question and, when an answer is
scored, the assistant's answer. An answer is scored as the tokens of ``prompt + answer`` (special tokens added, EOS
appended when the tokenizer did not end on it) past the prompt's own token count, every one of them (EOS included)
given all before it: ``avg_loss`` is their mean negative log-likelihood and the answer's probability is
``exp(-avg_loss)``.

Per item, on each set:

* ROUGE: greedy generation after the prompt (``max_new_tokens`` 200), decoded without special tokens, cut at the
  EOS text, stripped; ROUGE-L **recall** against the answer (``rouge_score``, Porter stemmer);
* probability: ``exp(-avg_loss)`` of the answer;
* truth ratio ``tr = exp(-mean_j avg_loss(perturbed_j)) / (exp(-avg_loss(correct)) + 1e-10)``, ``correct`` the
  paraphrased answer on the forget and retain sets and the answer itself on real authors and world facts;
  aggregated on the forget set as ``min(tr, 1 / (tr + 1e-10))`` (closer to 1 is better: the model cannot tell the
  paraphrase from wrong answers) and elsewhere as ``max(0, 1 - tr)`` (true better);
* on real authors and world facts the probability is normalised over the options:
  ``p(answer) / (p(answer) + sum_j p(perturbed_j) + 1e-10)``.

Forget quality (the KS test of the forget truth ratios against the retained model's) and model utility (the
harmonic mean of the nine retain / real-authors / world-facts figures) are computed from these items in
:mod:`unlearn_audit.analysis.figures`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .scoring import rouge_l
from ..engines.base import Advance
from ..engines.base import InferenceEngine as Engine
from ..inputs.data import TofuItems
from .base import ItemScore, ProbeOutput

SETS = {"forget": "tofu_f", "retain": "tofu_r", "real_authors": "tofu_ra", "world_facts": "tofu_wf"}
"""TOFU set -> the probe (and ``ProbeOutput.metric``) that reads it."""


def _ids(encoded: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns ids, or a mapping holding them (newer transformers)."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


class Template:
    """How a question (and an answer) become tokens: open-unlearning's ``template_args``."""

    def __init__(self, tokenizer: Any, settings: Any, chat: bool, shots: list[tuple[str, str]] | None = None) -> None:
        self.tokenizer, self.s, self.chat, self.shots = tokenizer, settings, chat, list(shots or [])

    def _messages(self, question: str, answer: str | None = None) -> list[dict[str, str]]:
        chat = [{"role": "system", "content": self.s.system_prompt}] if self.s.system_prompt else []
        for q, a in self.shots:  # the icl attack: solved questions as earlier turns
            chat += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        chat.append({"role": "user", "content": question})
        if answer is not None:
            chat.append({"role": "assistant", "content": answer})
        return chat

    def prompt(self, question: str) -> str:
        """The text generation starts from (special tokens: see :attr:`adds_special_tokens`)."""
        if self.chat:
            return self.tokenizer.apply_chat_template(self._messages(question), tokenize=False,
                                                      add_generation_prompt=True)
        return "".join(self._turn(q) + a + "\n\n" for q, a in self.shots) + self._turn(question)

    def _turn(self, question: str) -> str:
        return self.s.user_start_tag + question + self.s.user_end_tag + self.s.asst_start_tag

    @property
    def adds_special_tokens(self) -> bool:
        """Whether the prompt is tokenised with special tokens (the chat template writes its own)."""
        return not self.chat

    def pair(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) as open-unlearning cuts ``prompt + answer``: at the prompt's token count."""
        tok = self.tokenizer
        if self.chat:
            whole = _ids(tok.apply_chat_template(self._messages(question, answer), tokenize=True,
                                                 add_generation_prompt=False))
            prompt = _ids(tok.apply_chat_template(self._messages(question), tokenize=True, add_generation_prompt=True))
        else:
            text = self.prompt(question)
            whole = tok(text + answer, add_special_tokens=True)["input_ids"]
            prompt = tok(text, add_special_tokens=True)["input_ids"]
        if tok.eos_token_id is not None and whole[-1] != tok.eos_token_id:
            whole = whole + [tok.eos_token_id]
        return whole[:len(prompt)], whole[len(prompt):]


def _avg_losses(engine: Engine, template: Template, questions: list[str], answers: list[str],
                advance: Advance | None) -> np.ndarray:
    pairs = [template.pair(q, a) for q, a in zip(questions, answers)]
    logprobs = engine.continuation_logprobs(pairs, advance)
    return np.array([float(-lp.mean()) if len(lp) else math.nan for lp in logprobs])


def count(items: TofuItems) -> int:
    """Work units of one set (for progress): a generation and every scored answer."""
    return sum(2 + len(p) + (1 if items.paraphrased else 0) for p in items.perturbed)


def probe(engine: Engine, items: TofuItems, metric: str, settings: Any, chat: bool,
          advance: Advance | None = None) -> ProbeOutput:
    """One TOFU set: item score = ROUGE-L recall; ``extra`` holds the answer probability, the truth ratio and its
    aggregated forms, and the normalised probability (real authors, world facts)."""
    template = Template(engine.tokenizer, settings, chat, items.shots)
    prompts = [template.prompt(q) for q in items.questions]
    generations = engine.generate(prompts, settings.max_new_tokens, advance,
                                  add_special_tokens=template.adds_special_tokens)
    eos = engine.tokenizer.eos_token
    answer_loss = _avg_losses(engine, template, items.questions, items.answers, advance)
    correct_loss = (_avg_losses(engine, template, items.questions, items.paraphrased, advance)
                    if items.paraphrased else answer_loss)
    flat_q = [q for q, wrong in zip(items.questions, items.perturbed) for _ in wrong]
    flat_a = [w for wrong in items.perturbed for w in wrong]
    flat_loss = _avg_losses(engine, template, flat_q, flat_a, advance)
    out, at = [], 0
    for i, (question, answer, gen) in enumerate(zip(items.questions, items.answers, generations)):
        n = len(items.perturbed[i])
        wrong = flat_loss[at:at + n]
        at += n
        text = gen.split(eos)[0] if eos else gen
        text = text.strip()
        recall = rouge_l(answer, text, use_stemmer=True).recall
        prob = math.exp(-answer_loss[i])
        tr = math.exp(-float(np.mean(wrong))) / (math.exp(-correct_loss[i]) + 1e-10)
        wrong_probs = np.exp(-wrong)
        extra = {"prob": prob, "truth_ratio": tr, "tr_closer": min(tr, 1 / (tr + 1e-10)),
                 "tr_true_better": max(0.0, 1 - tr),
                 "prob_normalised": prob / (prob + float(wrong_probs.sum()) + 1e-10),
                 "avg_loss": float(answer_loss[i]), "correct_avg_loss": float(correct_loss[i]),
                 "perturbed_avg_loss": [float(x) for x in wrong]}
        out.append(ItemScore(f"{metric}/{i}", recall, prompt=question, reference=answer, generation=text,
                             extra=extra))
    decoding = "greedy" if engine.sample_temperature is None else \
        f"sampled, temperature {engine.sample_temperature}, seed {engine.seed}"
    return ProbeOutput(metric, "mean", out, {
        "template": "chat template" + (f", system prompt {settings.system_prompt!r}" if settings.system_prompt else "")
        if chat else repr(settings.user_start_tag + "{question}" + settings.user_end_tag + settings.asst_start_tag),
        "max_new_tokens": settings.max_new_tokens, "decoding": decoding, "rouge": "rougeL recall, Porter stemmer",
        "correct": "paraphrased_answer" if items.paraphrased else "answer",
        **({"shots": len(items.shots)} if items.shots else {})})
