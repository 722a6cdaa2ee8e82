"""The forget set cut in two halves by the unit that keeps them independent, for the attacks that learn from the
forget set itself (``relearn-forget`` trains on the training half, ``icl`` shows it in the prompt) while every run of
the audit probes only the other half (Deeb & Roger, arXiv 2410.08827: relearning on some forgotten facts restores the
others).

The units, by benchmark:

* MUSE: a forget document (the PrivLeak forget texts). A VerbMem item belongs to the documents holding its prompt, a
  KnowMem item to the documents holding its answer (whitespace-normalised text); an item whose documents fall in
  both halves, or that no document holds, is probed in neither half (counted in ``dropped``).
* TOFU: a fictitious author: ``author_items`` consecutive forget questions (TOFU keeps each author's 20 together).
* WMDP: a question.

The split is seeded (the audit's seed), the same for every model, and recorded; the utility sets (KnowMem retain,
TOFU's retain / real-authors / world-facts sets, MMLU, the PrivLeak and VerbMem holdout texts) are not cut."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InputError, UsageError
from .data import ChoiceItems, ForgetData, QASet, TofuItems

UNITS = {"muse": "document", "tofu": "author", "wmdp": "question"}
TRAIN_SHARE = 0.5


@dataclass(frozen=True)
class ForgetSplit:
    """The forget set's two halves.

    Attributes:
        probe: what every run of the audit probes (the forget parts cut to the probed half; utility sets whole).
        train: the training half, in the same shape (what ``relearn-forget`` trains on and ``icl`` shows).
        unit: what one unit is (``document``, ``author``, ``question``).
        seed: the seed of the shuffle.
        train_units, probe_units: the units' indices in each half, ascending.
        dropped: items probed in neither half, by part (MUSE items tied to both halves' documents, or to none).
    """

    probe: ForgetData
    train: ForgetData
    unit: str
    seed: int
    train_units: list[int]
    probe_units: list[int]
    dropped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What the record says of the split."""
        return {"unit": self.unit, "seed": self.seed, "train_share": TRAIN_SHARE,
                "units": {"train": len(self.train_units), "probed": len(self.probe_units)},
                "train_units": self.train_units, "probe_units": self.probe_units,
                "items": {"train": forget_counts(self.train), "probed": forget_counts(self.probe)},
                "dropped": self.dropped, "train_sha256": digest(training_texts(self.train))}


def forget_counts(data: ForgetData) -> dict[str, int]:
    """Items of each forget part (the parts the split cuts)."""
    if data.benchmark == "tofu":
        return {"tofu_forget": len(data.tofu["forget"].questions)}
    if data.benchmark == "wmdp":
        return {"wmdp": len(data.wmdp.questions) if data.wmdp else 0}
    return {"verbmem": len(data.verbmem_prompts), "knowmem_forget": len(data.knowmem_forget.questions),
            "privleak_forget": len(data.privleak_forget)}


def digest(texts: list[str]) -> str:
    return hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()


def qa_text(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}"


def training_texts(train: ForgetData) -> list[str]:
    """What ``relearn-forget`` trains on: MUSE's training documents and their KnowMem questions with answers, TOFU's
    questions with answers, WMDP's questions with the right choice's text (as ``Question: ...\\nAnswer: ...``)."""
    if train.benchmark == "tofu":
        items = train.tofu["forget"]
        return [qa_text(q, a) for q, a in zip(items.questions, items.answers)]
    if train.benchmark == "wmdp":
        w = train.wmdp
        return [qa_text(q.strip(), c[a]) for q, c, a in zip(w.questions, w.choices, w.answers)]
    qa = train.knowmem_forget
    return list(train.privleak_forget) + [qa_text(q, a) for q, a in zip(qa.questions, qa.answers)]


def _halves(n: int, seed: int, unit: str) -> tuple[list[int], list[int]]:
    if n < 2:
        fix = ("set tofu: {author_items: N} in the spec to the questions per author of this dataset, "
               if unit.startswith("author") else "")
        raise InputError(f"the forget set has {n} {unit} to cut in two halves (relearn-forget, icl)",
                         f"{fix}probe more items (--max-items) or drop those attacks")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = max(1, min(n - 1, round(n * TRAIN_SHARE)))
    return sorted(order[:cut]), sorted(order[cut:])


def _pick(values: list[Any], keep: list[int]) -> list[Any]:
    return [values[i] for i in keep]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _tied(items: list[str], documents: list[str]) -> list[set[int]]:
    """The documents holding each item's text."""
    docs = [_norm(d) for d in documents]
    return [{j for j, d in enumerate(docs) if _norm(t) and _norm(t) in d} for t in items]


def _muse(data: ForgetData, seed: int) -> ForgetSplit:
    documents = data.privleak_forget
    train_docs, probe_docs = _halves(len(documents), seed, "document")
    verbmem = _tied(data.verbmem_prompts, documents)
    knowmem = _tied(data.knowmem_forget.answers, documents)
    qa = data.knowmem_forget
    halves = {}
    for name, docs in (("train", set(train_docs)), ("probe", set(probe_docs))):
        v = [i for i, tied in enumerate(verbmem) if tied and tied <= docs]
        k = [i for i, tied in enumerate(knowmem) if tied and tied <= docs]
        halves[name] = replace(data, verbmem_prompts=_pick(data.verbmem_prompts, v),
                               verbmem_refs=_pick(data.verbmem_refs, v),
                               knowmem_forget=QASet(_pick(qa.questions, k), _pick(qa.answers, k), qa.icl_questions,
                                                    qa.icl_answers),
                               privleak_forget=_pick(documents, sorted(docs)))
    dropped = {"verbmem": len(verbmem) - sum(len(h.verbmem_prompts) for h in halves.values()),
               "knowmem_forget": len(knowmem) - sum(len(h.knowmem_forget.questions) for h in halves.values())}
    return ForgetSplit(halves["probe"], halves["train"], "document", seed, train_docs, probe_docs, dropped)


def _tofu(data: ForgetData, seed: int, author_items: int) -> ForgetSplit:
    items = data.tofu["forget"]
    n = len(items.questions)
    authors = (n + author_items - 1) // author_items
    train_authors, probe_authors = _halves(authors, seed, f"author ({author_items} questions each)")

    def cut(keep: list[int]) -> ForgetData:
        rows = [i for a in keep for i in range(a * author_items, min(n, (a + 1) * author_items))]
        part = TofuItems(_pick(items.questions, rows), _pick(items.answers, rows),
                         _pick(items.paraphrased, rows) if items.paraphrased else [], _pick(items.perturbed, rows))
        return replace(data, tofu={**data.tofu, "forget": part})

    return ForgetSplit(cut(probe_authors), cut(train_authors), "author", seed, train_authors, probe_authors)


def _wmdp(data: ForgetData, seed: int) -> ForgetSplit:
    w = data.wmdp
    train_q, probe_q = _halves(len(w.questions), seed, "question")

    def cut(keep: list[int]) -> ForgetData:
        return replace(data, wmdp=ChoiceItems(*(_pick(getattr(w, f), keep)
                                                for f in ("questions", "choices", "answers", "subjects"))))

    return ForgetSplit(cut(probe_q), cut(train_q), "question", seed, train_q, probe_q)


def split_forget(data: ForgetData, seed: int, author_items: int = 20) -> ForgetSplit:
    """Cut ``data``'s forget parts in a training and a probed half by independent units (see the module)."""
    if data.benchmark == "tofu":
        return _tofu(data, seed, author_items)
    if data.benchmark == "wmdp":
        return _wmdp(data, seed)
    split = _muse(data, seed)
    if not split.probe.verbmem_prompts and not split.probe.knowmem_forget.questions:
        raise InputError("no VerbMem or KnowMem item of the forget set is found in a single forget document, so the "
                         "forget set cannot be cut by document (relearn-forget, icl)",
                         "use a dataset whose VerbMem prompts and KnowMem answers appear in its PrivLeak forget texts, "
                         "or drop those attacks")
    return split


def with_shots(split: ForgetSplit, k: int) -> tuple[ForgetData, list[str]]:
    """The probed half with ``k`` items of the training half (drawn with the split's seed, the same for every probed
    item and every model; all of them when it has fewer: the settings record how many) before each probed forget
    item, in the benchmark's own prompt format, and the shots as text:

    * MUSE: KnowMem's in-context pairs are the ``k`` training questions with answers, then the dataset's own. VerbMem
      (a passage to continue) and PrivLeak (a membership test on texts) are question-free: unchanged, as the attack
      (few-shot questions) has no form for them.
    * TOFU: ``k`` question-answer turns before the question (the template's tags, or chat turns).
    * WMDP: ``k`` solved questions after the description, with the delimiters of lm-evaluation-harness's task
      configuration (not checked against its own few-shot code).
    """
    train, probe = split.train, split.probe
    if train.benchmark == "tofu":
        pool = list(zip(train.tofu["forget"].questions, train.tofu["forget"].answers))
    elif train.benchmark == "wmdp":
        pool = list(zip(train.wmdp.questions, train.wmdp.choices, train.wmdp.answers))
    else:
        pool = list(zip(train.knowmem_forget.questions, train.knowmem_forget.answers))
    if k < 1 or not pool:
        raise UsageError(f"icl:{k} has no example to show: the training half has {len(pool)} questions",
                         "probe more items (--max-items) or drop the icl attack")
    picked = sorted(random.Random(split.seed).sample(range(len(pool)), min(k, len(pool))))  # all, if fewer than k
    shots = [pool[i] for i in picked]
    if train.benchmark == "tofu":
        data = replace(probe, tofu={**probe.tofu, "forget": replace(probe.tofu["forget"], shots=shots)})
        return data, [qa_text(q, a) for q, a in shots]
    if train.benchmark == "wmdp":
        return replace(probe, wmdp=replace(probe.wmdp, shots=shots)), [qa_text(q.strip(), c[a]) for q, c, a in shots]
    knowmem = replace(probe.knowmem_forget, icl_questions=[q for q, _ in shots] + probe.knowmem_forget.icl_questions,
                      icl_answers=[a for _, a in shots] + probe.knowmem_forget.icl_answers)
    return replace(probe, knowmem_forget=knowmem), [qa_text(q, a) for q, a in shots]
