"""Build (or reuse) the miniature world: data, tokenizer, four checkpoints, laid out as a Hub cache.

Repos (all under the ``miniature`` org, in ``<root>/hub``, which is an ordinary ``HF_HUB_CACHE``):

* ``miniature/news`` (dataset): MUSE's layout, configs verbmem, knowmem, privleak, raw;
* ``miniature/original``: trained on forget + retain until it reproduces them verbatim;
* ``miniature/retrain``: trained on retain only (the ideal an unlearned model should look like);
* ``miniature/fragile``: a constructed worst case: unlearned inside the original's 4-bit RTN and FP4 cells by a
  projection no real method makes (forgets; 4-bit brings it back, bit for bit);
* ``miniature/robust``: unlearned without that constraint (forgetting survives quantization);
* ``miniature/ga_gdr-lr1e-04-fp32``, ``miniature/npo_gdr-lr1e-04-fp32``: real unlearning runs, GA_GDR and NPO_GDR as
  MUSE and open-unlearning run them (:mod:`unlearn_audit.miniature.methods`), at the smallest learning rate at which
  this model forgets its stories (measured: at 1e-5 it forgets nothing; at 5e-5 VerbMem stays 99-100).

The unlearned repos carry ``unlearn_audit.yaml`` and a card with ``base_model``, so
``unlearn-audit check miniature/fragile`` needs no other flag once ``HF_HUB_CACHE`` points here.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..support.noise import quiet_transformers
from .corpus import Corpus, Document, make_corpus, qa_text
from .hub_cache import folder_files, write_cached_repo
from .methods import Recipe, unlearn_with
from .train import CellConstraint, ModelSize, build_tokenizer, encode, encode_segments, new_model, train_lm, unlearn

ORG = "miniature"
DATASET = f"{ORG}/news"
REAL_RUNS = (Recipe("ga_gdr", lr=1e-4), Recipe("npo_gdr", lr=1e-4))
"""Real unlearning runs in the world (MUSE's News recipe: 10 epochs, batch 4, constant lr, float32 weights)."""
MODELS = ("original", "retrain", "fragile", "robust", *(r.name for r in REAL_RUNS))
BUILDER_VERSION = 4

StageProgress = Callable[[str, int, int], None]
"""progress(stage description, done, total)"""


@dataclass(frozen=True)
class MiniatureSettings:
    """Everything the build depends on; a change rebuilds."""

    n_forget: int = 40
    n_retain: int = 40
    n_holdout: int = 40
    seed: int = 1234
    vocab_size: int = 2048
    size: ModelSize = field(default_factory=ModelSize)
    epochs: int = 80
    lr: float = 4e-3
    qa_repeats: int = 4
    qa_per_pack: int = 8
    unlearn_steps: int = 150
    unlearn_batch: int = 8
    fragile_lr: float = 1e-3
    robust_lr: float = 1e-3
    forget_cap: float = 6.0
    grid_bits: int = 4
    grid_group: int = 128
    grid_fp4: bool = True
    """Also keep the fragile checkpoint on the original's bitsandbytes FP4 codes (the paper's 4-bit)."""
    real_runs: tuple[Recipe, ...] = REAL_RUNS

    def key(self) -> str:
        text = json.dumps({"builder": BUILDER_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MiniatureWorld:
    """Where a built miniature lives."""

    root: Path
    hub_cache: Path
    info: dict

    def repo(self, name: str) -> str:
        return f"{ORG}/{name}"


def default_root() -> Path:
    """``$UNLEARN_AUDIT_HOME/miniature``, else ``~/.cache/unlearn_audit/miniature``."""
    from ..support.home import home

    return home() / "miniature"


def icl_pairs(docs: list[Document]):  # noqa: ANN201
    """The 10 in-context QA pairs of a set (a different fact than the one each item asks)."""
    return [d.qas[(i + 1) % 3] for i, d in enumerate(docs[:10])]


def probe_pairs(docs: list[Document]):  # noqa: ANN201
    """The KnowMem items of a set: one fact per document."""
    return [d.qas[i % 3] for i, d in enumerate(docs)]


def qa_packs(tokenizer, docs: list[Document], rng: random.Random, per_pack: int) -> list[list[int]]:  # noqa: ANN001
    """Training sequences in the exact KnowMem prompt format: the ICL prefix, then QA pairs.

    Segments are split right after each ``"Answer: "`` so the tokens match what the probe feeds.
    """
    prefix = "".join(qa_text(q) for q in icl_pairs(docs))
    pairs = probe_pairs(docs)[:]
    rng.shuffle(pairs)
    packs = []
    for start in range(0, len(pairs), per_pack):
        segments = [prefix]
        for qa in pairs[start:start + per_pack]:
            segments[-1] += f"Question: {qa.question}\nAnswer: "
            segments.append(f"{qa.answer}\n\n")
        packs.append(encode_segments(tokenizer, segments))
    return packs


def real_unlearning_sets(tokenizer, corpus: Corpus, rng: random.Random, per_pack: int  # noqa: ANN001
                         ) -> tuple[list[list[int]], list[list[int]]]:
    """What the real methods unlearn from and retain: each forget story's text and its QA packs (one round, in the
    KnowMem prompt format the original learned them in; ``rng`` draws the packs), and the same of the retain stories."""
    forget = encode(tokenizer, [d.text for d in corpus.forget]) + qa_packs(tokenizer, corpus.forget, rng, per_pack)
    retain = encode(tokenizer, [d.text for d in corpus.retain]) + qa_packs(tokenizer, corpus.retain, rng, per_pack)
    return forget, retain


def _parquet(columns: dict[str, list[str]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def dataset_files(corpus: Corpus) -> dict[str, bytes]:
    """The forget-set data in MUSE's Hub layout."""
    def qa_cols(pairs) -> dict[str, list[str]]:  # noqa: ANN001
        return {"question": [q.question for q in pairs], "answer": [q.answer for q in pairs]}

    name = "{}/{}-00000-of-00001.parquet"
    files = {
        name.format("verbmem", "forget"): _parquet({"prompt": [d.prompt for d in corpus.forget],
                                                     "gt": [d.continuation for d in corpus.forget]}),
        name.format("knowmem", "forget_qa"): _parquet(qa_cols(probe_pairs(corpus.forget))),
        name.format("knowmem", "retain_qa"): _parquet(qa_cols(probe_pairs(corpus.retain))),
        name.format("knowmem", "forget_qa_icl"): _parquet(qa_cols(icl_pairs(corpus.forget))),
        name.format("knowmem", "retain_qa_icl"): _parquet(qa_cols(icl_pairs(corpus.retain))),
    }
    for split, docs in (("forget", corpus.forget), ("retain", corpus.retain), ("holdout", corpus.holdout)):
        files[name.format("privleak", split)] = _parquet({"text": [d.text for d in docs]})
        files[name.format("raw", "retain1" if split == "retain" else split)] = _parquet({"text": [d.text for d in docs]})
    configs = "\n".join(
        f"- config_name: {cfg}\n  data_files:\n" + "".join(
            f"  - split: {split}\n    path: {cfg}/{split}-00000-of-00001.parquet\n"
            for split in sorted({p.split("/")[1].split("-")[0] for p in files if p.startswith(cfg + "/")}))
        for cfg in ("verbmem", "knowmem", "privleak", "raw"))
    files["README.md"] = (
        f"---\nlicense: cc0-1.0\npretty_name: unlearn-audit miniature news\nconfigs:\n{configs}---\n\n"
        "# Miniature news forget set\n\nSynthetic news stories with invented names and numbers, made by "
        "unlearn-audit. Same layout as MUSE-News (configs verbmem, knowmem, privleak, raw).\n").encode()
    return files


def _card(name: str, body: str, base_model: str | None) -> bytes:
    meta = "---\nlibrary_name: transformers\nlicense: cc0-1.0\ntags:\n- unlearn-audit-miniature\n"
    if base_model:
        meta += f"base_model: {base_model}\n"
    meta += "---\n\n"
    return (meta + f"# {name}\n\n{body}\n").encode()


def _model_files(model, tokenizer, card: bytes, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = folder_files(Path(tmp))
    files["README.md"] = card
    files.update(extra or {})
    return files


SPEC_YAML = f"""spec_version: 1
name: miniature-news
dataset: {DATASET}
original: {ORG}/original
retrain: {ORG}/retrain
"""


def build_miniature(root: Path | None = None, settings: MiniatureSettings | None = None, *,
                    force: bool = False, progress: StageProgress | None = None) -> MiniatureWorld:
    """Build the miniature under ``root`` (default :func:`default_root`), or reuse a finished build."""
    import torch

    settings = settings or MiniatureSettings()
    root = Path(root) if root else default_root()
    final = root / settings.key()
    marker = final / "built.json"
    if marker.is_file() and not force:
        return MiniatureWorld(final, final / "hub", json.loads(marker.read_text()))
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        return _build(work, final, settings, progress, torch)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(work: Path, final: Path, s: MiniatureSettings, progress: StageProgress | None, torch) -> MiniatureWorld:  # noqa: ANN001
    quiet_transformers()  # no shard bars from save_pretrained in the user's terminal
    started = time.time()
    threads = torch.get_num_threads()
    tick = (lambda stage: (lambda done, total: progress(stage, done, total))) if progress else (lambda stage: None)
    hub = work / "hub"
    corpus = make_corpus(s.n_forget, s.n_retain, s.n_holdout, s.seed)
    commits = {DATASET: write_cached_repo(hub, DATASET, dataset_files(corpus), repo_type="dataset")}

    everything = corpus.forget + corpus.retain + corpus.holdout
    tokenizer = build_tokenizer([d.text for d in everything] + [qa_text(q) for d in everything for q in d.qas],
                                s.vocab_size)
    rng = random.Random(s.seed)

    def packs(docs: list[Document], repeats: int) -> list[list[int]]:
        return [p for _ in range(repeats) for p in qa_packs(tokenizer, docs, rng, s.qa_per_pack)]

    forget_seqs = encode(tokenizer, [d.text for d in corpus.forget]) + packs(corpus.forget, s.qa_repeats)
    retain_seqs = encode(tokenizer, [d.text for d in corpus.retain]) + packs(corpus.retain, s.qa_repeats)
    stats: dict[str, dict] = {}

    original = new_model(tokenizer, s.size, s.seed)
    t = time.time()
    loss = train_lm(original, forget_seqs + retain_seqs, epochs=s.epochs, lr=s.lr, batch_size=16,
                    pad_id=tokenizer.pad_token_id, seed=s.seed, progress=tick("training the original"))
    stats["original"] = {"final_loss": loss, "seconds": time.time() - t}

    retrain = new_model(tokenizer, s.size, s.seed)
    t = time.time()
    loss = train_lm(retrain, retain_seqs, epochs=s.epochs, lr=s.lr, batch_size=16,
                    pad_id=tokenizer.pad_token_id, seed=s.seed, progress=tick("training the retrain reference"))
    stats["retrain"] = {"final_loss": loss, "seconds": time.time() - t}

    unlearn_forget = encode(tokenizer, [d.text for d in corpus.forget]) + packs(corpus.forget, 2)
    unlearn_retain = encode(tokenizer, [d.text for d in corpus.retain]) + packs(corpus.retain, 2)
    unlearned = {}
    for name, lr, constrained in (("fragile", s.fragile_lr, True), ("robust", s.robust_lr, False)):
        model = copy.deepcopy(original)
        constraint = (CellConstraint.around(original, s.grid_bits, s.grid_group, fp4=s.grid_fp4)
                      if constrained else None)
        t = time.time()
        result = unlearn(model, unlearn_forget, unlearn_retain, steps=s.unlearn_steps, lr=lr,
                         batch_size=s.unlearn_batch, pad_id=tokenizer.pad_token_id, seed=s.seed,
                         forget_cap=s.forget_cap, constraint=constraint, progress=tick(f"unlearning ({name})"))
        stats[name] = {**result, "seconds": time.time() - t}
        unlearned[name] = model
    real_forget, real_retain = real_unlearning_sets(tokenizer, corpus, random.Random(s.seed), s.qa_per_pack)
    for recipe in s.real_runs:
        model, log = unlearn_with(original, recipe, real_forget, real_retain, pad_id=tokenizer.pad_token_id,
                                  progress=tick(f"unlearning ({recipe.name}, a real run)"))
        stats[recipe.name] = log
        unlearned[recipe.name] = model

    cards = {
        "original": ("The miniature's original model: trained on the forget and retain stories.", None),
        "retrain": ("Trained on the retain stories only: what perfect unlearning would look like.", None),
        "fragile": ("Unlearned from miniature/original by gradient ascent on the forget set plus descent on "
                    "the retain set, with every weight kept inside its cell of the original's 4-bit RTN "
                    "grid (group 128) and bitsandbytes FP4 grid (blocks of 64). Looks clean at full "
                    "precision; 4-bit quantization undoes it.",
                    f"{ORG}/original"),
        "robust": ("Unlearned from miniature/original by gradient ascent on the forget set plus descent on "
                   "the retain set, unconstrained: the forgetting survives quantization.", f"{ORG}/original"),
        **{r.name: (f"Unlearned from miniature/original by {r.method.upper()}, as MUSE's and open-unlearning's "
                    f"trainers run it: every parameter, AdamW, constant learning rate {r.lr:g}, {r.epochs} epochs of "
                    f"batch {r.batch_size} over the forget stories and their QA, {r.dtype} weights. A real unlearning "
                    "run, not constructed.", f"{ORG}/original") for r in s.real_runs},
    }
    models = {"original": original, "retrain": retrain, **unlearned}
    for name, model in models.items():
        body, base = cards[name]
        extra = {"unlearn_audit.yaml": SPEC_YAML.encode()} if name in unlearned else None
        commits[f"{ORG}/{name}"] = write_cached_repo(
            hub, f"{ORG}/{name}", _model_files(model, tokenizer, _card(f"{ORG}/{name}", body, base), extra))

    info = {"settings_key": s.key(), "settings": asdict(s), "commits": commits, "training": stats,
            "threads": threads, "build_seconds": round(time.time() - started, 1),
            "parameters": sum(p.numel() for p in original.parameters())}
    (work / "built.json").write_text(json.dumps(info, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return MiniatureWorld(final, final / "hub", info)
