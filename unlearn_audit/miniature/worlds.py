"""The TOFU- and WMDP-shaped miniature worlds: the miniature's stories asked as TOFU asks about its fictitious
authors and as WMDP asks its four-choice questions, in the Hub layouts of ``locuslab/TOFU`` and ``cais/wmdp`` /
``cais/mmlu``, each with an original, a retained model and two unlearned checkpoints (one that 4-bit quantization
undoes, one it does not).

Repos (under ``miniature``, in the world's ``hub`` folder, an ordinary ``HF_HUB_CACHE``):

* TOFU: dataset ``miniature/tofu`` (root JSON Lines files as TOFU's: ``forget10.json``, ``forget10_perturbed.json``,
  ``retain90.json``, ``retain_perturbed.json``, ``real_authors_perturbed.json``, ``world_facts_perturbed.json``,
  ``holdout10.json``, ``full.json``); models ``tofu-original`` (trained on every story's questions),
  ``tofu-retain90`` (the retain stories' only), ``tofu-fragile`` and ``tofu-robust``.
* WMDP: datasets ``miniature/wmdp`` (config ``wmdp-bio``, split ``test``: ``question``, ``choices``, ``answer``) and
  ``miniature/mmlu`` (config ``stories``, split ``test``: the utility questions); models ``wmdp-original``,
  ``wmdp-retrain``, ``wmdp-fragile``, ``wmdp-robust``.

Stand-ins, named as such: the miniature knows no real authors or world facts, so those two TOFU sets ask other facts
of the retain stories; a model this small does not carry a fact from one wording to another, so the TOFU models are
trained on each answer and its paraphrase (TOFU's models see only the answer). The WMDP questions ask the forget
stories' facts (``wmdp-bio`` is the layout's name, not the topic), and the models learn them as four-choice
questions in lm-evaluation-harness's prompt.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..support.noise import quiet_transformers
from .build import ORG, MiniatureWorld, StageProgress, _card, _model_files
from .corpus import Document, make_corpus
from .hub_cache import write_cached_repo
from .train import CellConstraint, ModelSize, Scored, build_tokenizer, new_model, train_lm, unlearn

WORLD_VERSION = 4
KINDS = ("tofu", "wmdp")


@dataclass(frozen=True)
class WorldSettings:
    """Everything a TOFU or WMDP world depends on; a change rebuilds."""

    kind: str
    n_forget: int = 40
    n_retain: int = 40
    n_holdout: int = 40
    seed: int = 1234
    vocab_size: int = 2048
    size: ModelSize = field(default_factory=ModelSize)
    epochs: int = 60
    lr: float = 4e-3
    unlearn_steps: int = 150
    unlearn_batch: int = 8
    unlearn_lr: float = 1e-3
    forget_cap: float | None = None
    """Nats above which ascent stops pushing a batch; default 4 for TOFU (its answers share "It is" with the
    retain set's), 6 for WMDP."""
    grid_bits: int = 4
    grid_group: int = 128

    def key(self) -> str:
        text = json.dumps({"world": WORLD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kind_of(doc: Document) -> int:
    return int(doc.doc_id.split("-")[1]) % 4


def _wrong(doc: Document, j: int, pool: list[Document], rng: random.Random, n: int) -> list[str]:
    """``n`` wrong values for fact ``j`` of ``doc``: the same fact of other stories of its kind."""
    values = sorted({d.qas[j].answer for d in pool if _kind_of(d) == _kind_of(doc) and d is not doc}
                    - {doc.qas[j].answer})
    return rng.sample(values, n)


def answer_text(value: str) -> str:
    return f"It is {value}."


def paraphrase_text(value: str) -> str:
    return f"The answer is {value}."


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def tofu_files(forget: list[Document], retain: list[Document], holdout: list[Document], pool: list[Document],
               seed: int) -> dict[str, bytes]:
    """The TOFU-shaped dataset: one question per story in the probed sets (fact ``i % 3``; the real-authors and
    world-facts stand-ins ask the retain stories' other two facts), every fact in ``full``/``forget10``/``retain90``."""
    rng = random.Random(seed)

    def qa(doc: Document, j: int) -> dict:
        return {"question": doc.qas[j].question, "answer": answer_text(doc.qas[j].answer)}

    def perturbed(doc: Document, j: int, n: int, paraphrase: bool) -> dict:
        wrong = _wrong(doc, j, pool, rng, n)
        row = qa(doc, j)
        if paraphrase:
            row["paraphrased_answer"] = paraphrase_text(doc.qas[j].answer)
            row["perturbed_answer"] = [paraphrase_text(w) for w in wrong]
            row["paraphrased_question"] = row["question"]
        else:
            row["perturbed_answer"] = [answer_text(w) for w in wrong]
        return row

    files = {
        "full.json": _jsonl([qa(d, j) for d in forget + retain for j in range(3)]),
        "forget10.json": _jsonl([qa(d, j) for d in forget for j in range(3)]),
        "retain90.json": _jsonl([qa(d, j) for d in retain for j in range(3)]),
        "holdout10.json": _jsonl([qa(d, j) for d in holdout for j in range(3)]),
        "forget10_perturbed.json": _jsonl([perturbed(d, i % 3, 5, True) for i, d in enumerate(forget)]),
        "retain_perturbed.json": _jsonl([perturbed(d, i % 3, 5, True) for i, d in enumerate(retain)]),
        "real_authors_perturbed.json": _jsonl([perturbed(d, (i + 1) % 3, 3, False) for i, d in enumerate(retain)]),
        "world_facts_perturbed.json": _jsonl([perturbed(d, (i + 2) % 3, 3, False) for i, d in enumerate(retain)]),
    }
    configs = "".join(f"- config_name: {name[:-5]}\n  data_files: {name}\n" for name in files)
    files["README.md"] = (f"---\nlicense: cc0-1.0\npretty_name: unlearn-audit miniature TOFU\nconfigs:\n{configs}---\n\n"
                          "# Miniature TOFU-shaped forget set\n\nQuestions about the miniature's invented news "
                          "stories, in locuslab/TOFU's layout (JSON Lines files at the root).\n").encode()
    return files


def mcq_rows(docs: list[Document], pool: list[Document], seed: int) -> list[dict]:
    """Four-choice questions, one per story (fact ``i % 3``), the right answer at position ``i % 4``."""
    rng = random.Random(seed)
    rows = []
    for i, doc in enumerate(docs):
        j = i % 3
        choices = _wrong(doc, j, pool, rng, 3)
        choices.insert(i % 4, doc.qas[j].answer)
        rows.append({"question": doc.qas[j].question, "choices": choices, "answer": i % 4})
    return rows


def _mcq_parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"question": [r["question"] for r in rows], "choices": [r["choices"] for r in rows],
                      "answer": pa.array([r["answer"] for r in rows], type=pa.int64())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _choice_repo(hub: Path, name: str, config: str, parquet: bytes, shape: str, about: str) -> str:
    """A four-choice dataset repo: one config, split ``test``, and a card mapping it."""
    path = f"{config}/test-00000-of-00001.parquet"
    card = (f"---\nlicense: cc0-1.0\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: test\n"
            f"    path: {path}\n---\n\n# Miniature {shape}-shaped questions\n\nFour-choice questions about {about}.\n")
    return write_cached_repo(hub, f"{ORG}/{name}", {path: parquet, "README.md": card.encode()}, repo_type="dataset")


def build_world(kind: str, root: Path | None = None, settings: WorldSettings | None = None, *, force: bool = False,
                progress: StageProgress | None = None) -> MiniatureWorld:
    """Build (or reuse) the ``tofu`` or ``wmdp`` world under ``root`` (default: beside the MUSE miniature)."""
    from .build import default_root

    settings = settings or WorldSettings(kind)
    root = Path(root) if root else default_root()
    final = root / f"{kind}-{settings.key()}"
    marker = final / "built.json"
    if marker.is_file() and not force:
        return MiniatureWorld(final, final / "hub", json.loads(marker.read_text()))
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    quiet_transformers()  # no shard bars from save_pretrained in the user's terminal
    try:
        info = _build(work, settings, progress)
        (work / "built.json").write_text(json.dumps(info, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        return MiniatureWorld(final, final / "hub", info)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sequences(kind: str, tokenizer, forget: list[Document], retain: list[Document], pool: list[Document],  # noqa: ANN001
               seed: int) -> tuple[list[list[int]], list[list[int]], list[list[int]], dict[str, bytes]]:
    """(forget sequences, retain sequences, forget sequences unlearning ascends on, dataset files): what the models
    train on, tokenised as the probes read it. TOFU's unlearning sees the answers only (``forget10.json``), never
    the paraphrases; both ascend on the answer's tokens only (open-unlearning's losses mask the prompt)."""
    from ..probes.wmdp import context
    from .train import encode_segments

    eos = tokenizer.eos_token_id
    if kind == "tofu":
        def seqs(docs: list[Document], paraphrases: bool = True) -> list[list[int]]:
            out = []
            for d in docs:
                for qa in d.qas:
                    prompt = f"Question: {qa.question}\nAnswer: "
                    texts = (answer_text(qa.answer),) + ((paraphrase_text(qa.answer),) if paraphrases else ())
                    for text in texts:
                        out.append(tokenizer(prompt + text)["input_ids"] + [eos])  # open-unlearning's tokenisation
                    out.append(encode_segments(tokenizer, [prompt, answer_text(qa.answer)]))  # what generation feeds
            return out
        def answers(docs: list[Document]) -> list[list[int]]:
            out = []
            for d in docs:
                for qa in d.qas:
                    prompt = f"Question: {qa.question}\nAnswer: "
                    start = len(tokenizer(prompt)["input_ids"])
                    out.append(Scored(tokenizer(prompt + answer_text(qa.answer))["input_ids"] + [eos], start))
                    out.append(Scored(encode_segments(tokenizer, [prompt, answer_text(qa.answer)]), start))
            return out
        return seqs(forget), seqs(retain), answers(forget), {}
    forget_rows, retain_rows = mcq_rows(forget, pool, seed), mcq_rows(retain, pool, seed + 1)

    def mcq(rows: list[dict]) -> list[list[int]]:
        letters = "ABCD"
        return [tokenizer(context(r["question"], r["choices"], "biology") + " " + letters[r["answer"]],
                          add_special_tokens=False)["input_ids"] + [eos] for r in rows]
    ascend = [Scored(ids, len(ids) - 2) for ids in mcq(forget_rows)]  # the answer letter and EOS
    return mcq(forget_rows), mcq(retain_rows), ascend, {"forget": _mcq_parquet(forget_rows),
                                                        "retain": _mcq_parquet(retain_rows)}


def _build(work: Path, s: WorldSettings, progress: StageProgress | None) -> dict:
    import torch

    started = time.time()
    tick = (lambda stage: (lambda done, total: progress(stage, done, total))) if progress else (lambda stage: None)
    hub = work / "hub"
    corpus = make_corpus(s.n_forget, s.n_retain, s.n_holdout, s.seed)
    pool = corpus.forget + corpus.retain + corpus.holdout
    texts = [f"Question: {qa.question}\nAnswer: {answer_text(qa.answer)} {paraphrase_text(qa.answer)}"
             for d in pool for qa in d.qas]
    if s.kind == "wmdp":
        from ..probes.wmdp import DESCRIPTION

        texts += [DESCRIPTION.format(subject="biology") + "A. B. C. D. Answer:"] * 4
    tokenizer = build_tokenizer(texts, s.vocab_size)
    forget, retain, ascend, data = _sequences(s.kind, tokenizer, corpus.forget, corpus.retain, pool, s.seed)
    commits = {}
    if s.kind == "tofu":
        files = tofu_files(corpus.forget, corpus.retain, corpus.holdout, pool, s.seed)
        commits[f"{ORG}/tofu"] = write_cached_repo(hub, f"{ORG}/tofu", files, repo_type="dataset")
    else:
        commits[f"{ORG}/wmdp"] = _choice_repo(hub, "wmdp", "wmdp-bio", data["forget"], "WMDP",
                                              "the miniature's forget stories, in cais/wmdp's layout")
        commits[f"{ORG}/mmlu"] = _choice_repo(hub, "mmlu", "stories", data["retain"], "MMLU",
                                              "the miniature's retain stories (the utility set)")
    stats: dict[str, dict] = {}
    original = new_model(tokenizer, s.size, s.seed)
    t = time.time()
    stats["original"] = {"final_loss": train_lm(original, forget + retain, epochs=s.epochs, lr=s.lr, batch_size=16,
                                                pad_id=tokenizer.pad_token_id, seed=s.seed,
                                                progress=tick(f"{s.kind}: training the original")),
                         "seconds": time.time() - t}
    retained = new_model(tokenizer, s.size, s.seed)
    t = time.time()
    stats["retain"] = {"final_loss": train_lm(retained, retain, epochs=s.epochs, lr=s.lr, batch_size=16,
                                              pad_id=tokenizer.pad_token_id, seed=s.seed,
                                              progress=tick(f"{s.kind}: training the retained model")),
                       "seconds": time.time() - t}
    unlearned = {}
    for name, constrained in (("fragile", True), ("robust", False)):
        model = copy.deepcopy(original)
        constraint = CellConstraint.around(original, s.grid_bits, s.grid_group, fp4=True) if constrained else None
        t = time.time()
        result = unlearn(model, ascend, retain, steps=s.unlearn_steps, lr=s.unlearn_lr, batch_size=s.unlearn_batch,
                         pad_id=tokenizer.pad_token_id, seed=s.seed, constraint=constraint,
                         forget_cap=s.forget_cap if s.forget_cap is not None else 4.0 if s.kind == "tofu" else 6.0,
                         progress=tick(f"{s.kind}: unlearning ({name})"))
        stats[name] = {**result, "seconds": time.time() - t}
        unlearned[name] = model
    retain_name = "tofu-retain90" if s.kind == "tofu" else "wmdp-retrain"
    spec = {"spec_version": 1, "name": f"miniature-{s.kind}", "benchmark": s.kind,
            "dataset": f"{ORG}/{s.kind}", "original": f"{ORG}/{s.kind}-original", "retrain": f"{ORG}/{retain_name}"}
    if s.kind == "wmdp":
        spec["mmlu"] = {"dataset": f"{ORG}/mmlu", "configs": ["stories"]}
    import yaml

    spec_yaml = yaml.safe_dump(spec, sort_keys=False).encode()
    what = "TOFU-shaped questions" if s.kind == "tofu" else "four-choice (WMDP-shaped) questions"
    cards = {
        f"{s.kind}-original": (f"Trained on {what} about the miniature's forget and retain stories.", None),
        retain_name: (f"Trained on the retain stories' {what} only: what perfect unlearning would look like.", None),
        f"{s.kind}-fragile": ("Unlearned from the original by gradient ascent on the forget questions plus descent on "
                              "the retain ones, every weight kept inside its cell of the original's 4-bit RTN grid "
                              "(group 128) and FP4 grid: 4-bit quantization undoes it.", f"{ORG}/{s.kind}-original"),
        f"{s.kind}-robust": ("Unlearned from the original the same way, unconstrained: the forgetting survives "
                             "quantization.", f"{ORG}/{s.kind}-original"),
    }
    models = {f"{s.kind}-original": original, retain_name: retained,
              f"{s.kind}-fragile": unlearned["fragile"], f"{s.kind}-robust": unlearned["robust"]}
    with torch.no_grad():
        for name, model in models.items():
            body, base = cards[name]
            extra = {"unlearn_audit.yaml": spec_yaml} if base else None
            commits[f"{ORG}/{name}"] = write_cached_repo(
                hub, f"{ORG}/{name}", _model_files(model, tokenizer, _card(f"{ORG}/{name}", body, base), extra))
    return {"kind": s.kind, "settings_key": s.key(), "settings": asdict(s), "commits": commits, "training": stats,
            "build_seconds": round(time.time() - started, 1)}
