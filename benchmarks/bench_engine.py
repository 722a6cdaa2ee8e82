"""Probe engine benchmark: the batched engine against a one-at-a-time loop written as MUSE's reference
evaluation code runs (one ``model.generate`` per prompt, generating the full budget and cutting at stop
strings afterwards; one forward pass per text for Min-K%).

Both run every MUSE probe (VerbMem, KnowMem forget and retain, PrivLeak) on the miniature's original
model (or ``--model DIR``, e.g. SmolLM2-135M), on CPU in float32, with greedy decoding. The script checks that the figures are identical (every
generation and every score) and prints wall time, tokens per second (generated + scored tokens) and the
peak resident memory added by each. Run it on an otherwise idle machine:

    python benchmarks/bench_engine.py [--items N] [--batch-size B] [--device cpu|cuda] [--json out.json]

Exit status 1 when the figures differ. The target (issue #7): at least 5x faster with identical figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
import psutil
import torch

from unlearn_audit.probes.scoring import min_k_score, rouge_l
from unlearn_audit.engines.hf import HFEngine as Engine
from unlearn_audit.inputs.data import load_forget_data
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.inputs.spec import spec_for_dataset
from unlearn_audit.miniature.build import build_miniature
from unlearn_audit.probes import muse


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms by a thread."""

    def __enter__(self) -> PeakRSS:
        self.process, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def one_at_a_time(model, tokenizer, data, device: str) -> dict[str, list]:  # noqa: ANN001
    """MUSE's reference loop: each prompt alone, the whole token budget, stops cut afterwards."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(prompt: str, max_new_tokens: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def logprobs(text: str) -> np.ndarray:
        ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
        logits = model(ids).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu().numpy().astype(np.float64)

    out: dict[str, list] = {}
    with torch.no_grad():
        out["verbmem"] = [generate(p, 128) for p in data.verbmem_prompts]
        for name, qa in (("knowmem_f", data.knowmem_forget), ("knowmem_r", data.knowmem_retain)):
            prompts = [muse.knowmem_prompt(qa.icl_questions, qa.icl_answers, q) for q in qa.questions]
            out[name] = [muse.cut_at_stops(generate(p, 32)) for p in prompts]
        out["privleak"] = [logprobs(t) for t in data.privleak_forget + data.privleak_holdout]
    return out


def batched(model, tokenizer, data, batch_size: int) -> dict[str, list]:  # noqa: ANN001
    engine = Engine(model, tokenizer, batch_size=batch_size)
    out: dict[str, list] = {"verbmem": engine.generate(data.verbmem_prompts, 128)}
    for name, qa in (("knowmem_f", data.knowmem_forget), ("knowmem_r", data.knowmem_retain)):
        prompts = [muse.knowmem_prompt(qa.icl_questions, qa.icl_answers, q) for q in qa.questions]
        out[name] = [muse.cut_at_stops(g) for g in engine.generate(prompts, 32, stops=muse.KNOWMEM_STOPS)]
    out["privleak"] = [s.logprobs for s in engine.token_stats(data.privleak_forget + data.privleak_holdout)]
    return out


def figures(out: dict[str, list], data, tokenizer) -> dict[str, float]:  # noqa: ANN001
    """The probes' headline figures, scored the same way for both paths."""
    refs = [muse.reference_cut(tokenizer, r, 128) for r in data.verbmem_refs]
    n_forget = len(data.privleak_forget)
    mink = np.array([min_k_score(lp, 0.4) for lp in out["privleak"]])
    from unlearn_audit.analysis.statistics import auc_forget_vs_holdout
    return {
        "VerbMem": 100 * float(np.mean([rouge_l(r, g).f1 for r, g in zip(refs, out["verbmem"])])),
        "KnowMem forget": 100 * float(np.mean([rouge_l(a, g).f1 for a, g in
                                               zip(data.knowmem_forget.answers, out["knowmem_f"])])),
        "KnowMem retain": 100 * float(np.mean([rouge_l(a, g).f1 for a, g in
                                               zip(data.knowmem_retain.answers, out["knowmem_r"])])),
        "Min-K% AUC": 100 * auc_forget_vs_holdout(mink[:n_forget], mink[n_forget:]),
    }


def tokens(out: dict[str, list], tokenizer) -> int:  # noqa: ANN001
    generated = sum(len(tokenizer(g, add_special_tokens=False).input_ids)
                    for key in ("verbmem", "knowmem_f", "knowmem_r") for g in out[key])
    return generated + sum(len(lp) for lp in out["privleak"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=None, help="items per split (default: all 40)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--model", default=None, help="a model folder instead of the miniature's original "
                                                      "(e.g. SmolLM2-135M, see bench_real.py)")
    args = parser.parse_args()

    world = build_miniature()
    repo = resolve(args.model) if args.model else resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    loaded = load_model(repo, device=args.device)
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    data = load_forget_data(folder, spec_for_dataset("miniature/news"), max_items=args.items)
    model, tok = loaded.model, loaded.tokenizer
    batched(model, tok, load_forget_data(folder, spec_for_dataset("miniature/news"), max_items=2), 2)  # warm-up

    results = {}
    for name, run in (("one-at-a-time (MUSE loop)", lambda: one_at_a_time(model, tok, data, args.device)),
                      (f"engine (batch {args.batch_size})", lambda: batched(model, tok, data, args.batch_size))):
        with PeakRSS() as peak:
            start = time.perf_counter()
            out = run()
            seconds = time.perf_counter() - start
        results[name] = {"out": out, "seconds": seconds, "tokens": tokens(out, tok), "peak_mb": peak.added_mb,
                         "figures": figures(out, data, tok)}

    (loop_name, loop), (engine_name, engine) = results.items()
    same_text = all(loop["out"][k] == engine["out"][k] for k in ("verbmem", "knowmem_f", "knowmem_r"))
    max_lp_diff = max(float(np.abs(a - b).max()) if len(a) else 0.0
                      for a, b in zip(loop["out"]["privleak"], engine["out"]["privleak"]))
    same_figures = {k: round(v, 6) for k, v in loop["figures"].items()} == \
                   {k: round(v, 6) for k, v in engine["figures"].items()}
    print(f"{args.model or 'miniature original'}, {len(data.verbmem_prompts)} items per split, {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, r in results.items():
        print(f"{name:28s} {r['seconds']:7.1f} s  {r['tokens'] / r['seconds']:8.0f} tokens/s  "
              f"peak +{r['peak_mb']:6.1f} MiB  " + "  ".join(f"{k} {v:.2f}" for k, v in r["figures"].items()))
    ratio = loop["seconds"] / engine["seconds"]
    print(f"speed-up {ratio:.1f}x; generations identical: {same_text}; figures identical: {same_figures}; "
          f"largest token log-prob difference {max_lp_diff:.1e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"ratio": ratio, "identical_generations": same_text, "identical_figures": same_figures,
                       "max_logprob_diff": max_lp_diff,
                       **{name: {k: v for k, v in r.items() if k != "out"} for name, r in results.items()}},
                      handle, indent=2)
    return 0 if same_text and same_figures else 1


if __name__ == "__main__":
    sys.exit(main())
