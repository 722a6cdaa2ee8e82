"""The same probes through the hf engine and through vLLM: wall time, tokens per second, peak memory.

Every MUSE probe (VerbMem, KnowMem forget and retain, PrivLeak) on one model at full precision, greedy, in
float32 on CPU (or the run dtype on a GPU), through ``Engine`` (transformers) and ``VLLMEngine``; prints the
seconds (vLLM's start-up separately), generated + scored tokens per second, the peak resident memory of the
whole process tree (vLLM runs the model in child processes), and whether the figures agree. Run it from
.venv-vllm (``make vllm``) on an otherwise idle machine:

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--model DIR] [--items N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import psutil


class TreePeak:
    """Peak resident memory of this process and its children, sampled every 50 ms."""

    def __enter__(self) -> TreePeak:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def probe(engine, data, tokenizer) -> dict[str, list]:  # noqa: ANN001
    from unlearn_audit.probes.muse import KNOWMEM_STOPS, cut_at_stops, knowmem_prompt

    out = {"verbmem": engine.generate(data.verbmem_prompts, 128)}
    for key, qa in (("knowmem_f", data.knowmem_forget), ("knowmem_r", data.knowmem_retain)):
        prompts = [knowmem_prompt(qa.icl_questions, qa.icl_answers, q) for q in qa.questions]
        out[key] = [cut_at_stops(g) for g in engine.generate(prompts, 32, stops=KNOWMEM_STOPS)]
    out["privleak"] = [s.logprobs for s in engine.token_stats(data.privleak_forget + data.privleak_holdout)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder (default: the miniature's original)")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np

    from unlearn_audit.engines.hf import HFEngine as Engine
    from unlearn_audit.engines.vllm import VLLMEngine
    from unlearn_audit.inputs.data import load_forget_data
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.models import load_model
    from unlearn_audit.inputs.spec import spec_for_dataset
    from unlearn_audit.miniature.build import build_miniature
    from unlearn_audit.support.noise import quiet_third_party

    quiet_third_party()
    world = build_miniature()
    repo = resolve(args.model) if args.model else resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    loaded = load_model(repo)
    news = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    data = load_forget_data(news, spec_for_dataset("miniature/news"), max_items=args.items)
    results = {}
    for name in ("hf", "vllm"):
        with TreePeak() as peak:
            t = time.perf_counter()
            engine = (Engine(loaded.model, loaded.tokenizer, batch_size=None) if name == "hf"
                      else VLLMEngine(loaded.model, loaded.tokenizer, source=repo.path, dtype=loaded.dtype))
            started = time.perf_counter() - t
            t = time.perf_counter()
            out = probe(engine, data, loaded.tokenizer)
            seconds = time.perf_counter() - t
            if name == "vllm":
                engine.close()
        tokens = sum(len(loaded.tokenizer(g, add_special_tokens=False).input_ids)
                     for key in ("verbmem", "knowmem_f", "knowmem_r") for g in out[key]) + sum(map(len, out["privleak"]))
        results[name] = {"start_seconds": round(started, 1), "probe_seconds": round(seconds, 1),
                         "tokens_per_second": round(tokens / seconds), "peak_tree_mb": round(peak.peak / 2**20),
                         "out": out}
    hf, vl = results["hf"]["out"], results["vllm"]["out"]
    same = sum(a == b for k in ("verbmem", "knowmem_f", "knowmem_r") for a, b in zip(hf[k], vl[k]))
    total = sum(len(hf[k]) for k in ("verbmem", "knowmem_f", "knowmem_r"))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(hf["privleak"], vl["privleak"]))
    summary = {"model": str(repo.path), "items": len(data.verbmem_prompts), "generations_identical": f"{same}/{total}",
               "largest_logprob_difference": diff,
               **{n: {k: v for k, v in r.items() if k != "out"} for n, r in results.items()}}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main()
