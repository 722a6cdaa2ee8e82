"""Run MUSE's own evaluation code on the MUSE miniature and store its per-item outputs as a test fixture.

MUSE's repository (swj0419/muse_bench) is not a package on PyPI, and the suite cannot fetch it, so this script
runs its metric functions once, from a checkout, on the libraries installed here, and writes what they returned:

    python benchmarks/peers/muse_eval.py --checkout PATH/TO/muse_bench \
        --out tests/fixtures/peers/muse_eval.json

Its code runs unchanged: ``metrics/verbmem.py``, ``metrics/knowmem.py`` and ``metrics/privleak.py``'s ``eval``
(imported from the checkout as the package ``metrics``), with each model and tokenizer loaded as its
``utils.load_model`` and ``load_tokenizer`` load them (``from_pretrained``; float32 on CPU). The items are the miniature's (read by unlearn-audit's data loader: MUSE's loader reads
its own JSON files): VerbMem's prompts and references, KnowMem's questions, answers and in-context examples,
PrivLeak's forget and holdout texts. ``metrics/privleak.py``'s ``eval`` fails at this commit (it calls ``.keys()``
on the list ``eval_data`` returns), so its two steps are called directly: ``eval_data`` on each split (the per-text
Min-K%) and ``sweep`` on forget (0) against holdout (1), as ``eval`` pairs them, for the AUC.
``tests/test_peer_parity.py`` compares the tool with the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fixture

MODELS = ("original", "fragile", "robust", "retrain", "ga_gdr-lr1e-04-fp32", "npo_gdr-lr1e-04-fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True, help="a checkout of swj0419/muse_bench")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/peers/muse_eval.json"))
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    sys.path.insert(0, str(checkout))
    import numpy as np
    import torch
    from metrics.knowmem import eval as eval_knowmem
    from metrics.privleak import eval_data, sweep
    from metrics.verbmem import eval as eval_verbmem
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn_audit.inputs.data import load_forget_data
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.spec import spec_for_dataset
    from unlearn_audit.miniature.build import build_miniature

    world = build_miniature()
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    data = load_forget_data(folder, spec_for_dataset("miniature/news"))
    result = fixture.header("swj0419/muse_bench", checkout, world.info)
    for name in MODELS:
        path = resolve(f"miniature/{name}", cache_dir=world.hub_cache, offline=True).path
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        with torch.no_grad():
            _, verbmem = eval_verbmem(model, tokenizer, data.verbmem_prompts, data.verbmem_refs, 128)
            kept = {"verbmem_f": [{"rougeL": d["rougeL"], "response": d["response"], "gt": d["gt"]} for d in verbmem]}
            for metric, qa in (("knowmem_f", data.knowmem_forget), ("knowmem_r", data.knowmem_retain)):
                _, log = eval_knowmem(model, tokenizer, qa.questions, qa.answers, qa.icl_questions, qa.icl_answers, 32)
                kept[metric] = [{"rougeL": d["rougeL"], "response": d["response"]} for d in log]
            forget, holdout = (eval_data(texts, model, tokenizer) for texts in (data.privleak_forget,
                                                                               data.privleak_holdout))
        scores = [d["Min-40%"] for d in forget + holdout]
        _, _, auc, _ = sweep(np.array(scores), np.array([0] * len(forget) + [1] * len(holdout)))
        kept["privleak"] = {"auc_forget_holdout_min40": float(auc), "forget": [d["Min-40%"] for d in forget],
                            "holdout": [d["Min-40%"] for d in holdout]}
        result["models"][f"miniature/{name}"] = kept
        print(f"{name}: VerbMem {100 * sum(d['rougeL'] for d in kept['verbmem_f']) / len(verbmem):.1f}, "
              f"KnowMem {100 * sum(d['rougeL'] for d in kept['knowmem_f']) / len(kept['knowmem_f']):.1f}, "
              f"AUC {auc:.3f}", flush=True)
    fixture.write(args.out, result)


if __name__ == "__main__":
    main()
