"""MUSE's three probes: VerbMem, KnowMem and PrivLeak, as its reference code defines them.

* VerbMem: greedy continuation (``max_new_tokens=128``) of each forget prompt, scored by ROUGE-L F1
  against the reference cut to its first 128 tokens.
* KnowMem: ``"Question: {q}\\nAnswer: {a}\\n\\n"`` for the ICL pairs, then ``"Question: {q}\\nAnswer: "``;
  greedy, 32 tokens, cut at the first stop string; ROUGE-L F1 against the answer.
* PrivLeak: Min-K% (k = 0.4) of each forget and holdout text; AUC of forget (0) vs holdout (1).
"""

from __future__ import annotations

from .scoring import min_k_plus_plus_score, min_k_score, rouge_l, zlib_score
from ..engines.base import Advance
from ..engines.base import InferenceEngine as Engine
from ..inputs.data import QASet
from .base import ItemScore, ProbeOutput

KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")


def knowmem_prompt(icl_questions: list[str], icl_answers: list[str], question: str) -> str:
    """The exact KnowMem prompt string of MUSE's reference code."""
    prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in zip(icl_questions, icl_answers))
    return prefix + f"Question: {question}\nAnswer: "


def knowmem_chat_prompt(tokenizer, icl_questions: list[str], icl_answers: list[str], question: str) -> str:  # noqa: ANN001
    """The KnowMem prompt for an instruct model: the ICL pairs as earlier turns (user ``Question: {q}``,
    assistant ``{a}``), then the question as the last user turn, through the tokenizer's own chat
    template with the generation prompt (as open-unlearning formats its Instruct models' prompts)."""
    messages = []
    for q, a in zip(icl_questions, icl_answers):
        messages += [{"role": "user", "content": f"Question: {q}"}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": f"Question: {question}"})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def cut_at_stops(text: str, stops: tuple[str, ...] = KNOWMEM_STOPS) -> str:
    """``text`` up to the earliest stop string."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def reference_cut(tokenizer, reference: str, max_tokens: int) -> str:  # noqa: ANN001
    """The reference as MUSE scores it: its first ``max_tokens`` tokens, decoded."""
    ids = tokenizer(reference, add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def verbmem(engine: Engine, prompts: list[str], references: list[str], max_new_tokens: int = 128,
            advance: Advance | None = None, *, stemmer: bool = False, metric: str = "verbmem_f") -> ProbeOutput:
    """VerbMem of ``prompts`` (``metric`` ``verbmem_h``: the same probe on held-out text, the floor)."""
    generations = engine.generate(prompts, max_new_tokens, advance)
    items = []
    prefix = "verbmem" if metric == "verbmem_f" else metric
    for i, (prompt, ref, gen) in enumerate(zip(prompts, references, generations)):
        cut = reference_cut(engine.tokenizer, ref, max_new_tokens)
        r = rouge_l(cut, gen, use_stemmer=stemmer)
        items.append(ItemScore(f"{prefix}/{i}", r.f1, prompt=prompt, reference=cut, generation=gen,
                               extra={"rougeL_recall": r.recall}))
    return ProbeOutput(metric, "mean", items, {"max_new_tokens": max_new_tokens, **_decoding(engine, stemmer)})


def knowmem(engine: Engine, qa: QASet, metric: str, max_new_tokens: int = 32,
            advance: Advance | None = None, *, stemmer: bool = False, chat_template: bool = False) -> ProbeOutput:
    if chat_template:  # the template carries the special tokens (BOS) itself
        prompts = [knowmem_chat_prompt(engine.tokenizer, qa.icl_questions, qa.icl_answers, q) for q in qa.questions]
    else:
        prompts = [knowmem_prompt(qa.icl_questions, qa.icl_answers, q) for q in qa.questions]
    generations = [cut_at_stops(g) for g in engine.generate(prompts, max_new_tokens, advance, stops=KNOWMEM_STOPS,
                                                            add_special_tokens=not chat_template)]
    items = []
    for i, (q, a, gen) in enumerate(zip(qa.questions, qa.answers, generations)):
        r = rouge_l(a, gen, use_stemmer=stemmer)
        items.append(ItemScore(f"{metric}/{i}", r.f1, prompt=q, reference=a, generation=gen,
                               extra={"rougeL_recall": r.recall}))
    return ProbeOutput(metric, "mean", items, {"max_new_tokens": max_new_tokens, "icl_pairs": len(qa.icl_questions),
                                               "stops": list(KNOWMEM_STOPS), "chat_template": chat_template,
                                               **_decoding(engine, stemmer)})


def _decoding(engine: Engine, stemmer: bool) -> dict[str, object]:
    decoding = "greedy" if engine.sample_temperature is None else \
        f"sampled, temperature {engine.sample_temperature}, seed {engine.seed}"
    return {"decoding": decoding, "rouge": "rougeL F1" + (", Porter stemmer" if stemmer else ", no stemmer")}


MIA_SCORES = ("minkpp", "zlib", "loss")
"""Membership-inference scores computed beside Min-K% for every text (higher = less likely a member)."""


def privleak(engine: Engine, forget: list[str], holdout: list[str], k: float = 0.4,
             advance: Advance | None = None, *, at_least_one: bool = False) -> ProbeOutput:
    """Min-K% (the PrivLeak score) and, beside it, Min-K%++, zlib ratio and loss for every text."""
    items = []
    for split, texts in (("forget", forget), ("holdout", holdout)):
        for i, (text, st) in enumerate(zip(texts, engine.token_stats(texts, advance))):
            lp = st.logprobs
            items.append(ItemScore(
                f"privleak/{split}/{i}", min_k_score(lp, k, at_least_one=at_least_one), prompt=None,
                reference=text[:200],
                extra={"split": split, "tokens": int(len(lp)),
                       "minkpp": min_k_plus_plus_score(lp, st.mu, st.sigma, k, at_least_one=at_least_one),
                       "zlib": zlib_score(lp, text),
                       "loss": float(-lp.mean()) if len(lp) else float("nan")}))
    count = "max(1, int(n*k))" if at_least_one else "int(n*k)"
    return ProbeOutput("privleak", "auc", items, {
        "score": f"Min-K% k={k} over {count} tokens", "auc": "roc_curve(y, -score), forget=0, holdout=1",
        "also": {"minkpp": f"Min-K%++ k={k}", "zlib": "mean NLL / zlib bytes", "loss": "mean NLL"}})
