"""Time the weight-level diagnostic on the largest model this machine can build, and project to 7B/70B.

Builds (once, under ``$UNLEARN_AUDIT_HOME/bench``) a random-init Llama with TinyLlama-1.1B's shape
(hidden 2048, MLP 5632, 22 layers, GQA 32/4 heads, vocabulary 32000; about 1.1B parameters, stored in
bfloat16 as published checkpoints are) and a copy with every linear weight moved by ±1e-2·|w| (the
paper's regime, far below a 4-bit step; ±1e-4·|w| is below bfloat16's own resolution of 2^-8 and would
round back to the same weights), then runs ``weight_diff`` for the audit's default variants (rtn:8, rtn:4) and for the
``diff`` command's default set (rtn:4, rtn:8, bnb:fp4, bnb:nf4, bnb:int8), and prints seconds, the rate
in linear weights per second, and the projection for Llama-2-7B (6.5B linear weights) and 70B (68.4B)
at that rate. Random weights are fine for timing: the work per weight does not depend on the values.

    python benchmarks/bench_diagnostic.py [--layers 22] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

LINEAR_7B = 6.48e9  # Llama-2-7B: 32 layers x (4 x 4096^2 + 3 x 4096 x 11008)
LINEAR_70B = 68.4e9  # Llama-2-70B: 80 layers x (2 x 8192^2 + 2 x 8192 x 1024 + 3 x 8192 x 28672)


def build(root: Path, layers: int) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_audit.miniature.nudge import nudge_checkpoint

    original, nudged = root / f"llama-1b-{layers}l", root / f"llama-1b-{layers}l-nudged-1e-2"
    if not (original / "config.json").is_file():
        config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                             num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                             max_position_embeddings=2048, dtype="bfloat16")
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(original, safe_serialization=True)
        del model
    if not (nudged / "config.json").is_file():
        nudge_checkpoint(original, nudged, rel=1e-2, seed=0)
    return original, nudged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from unlearn_audit.quantize import parse_variants
    from unlearn_audit.inputs.checkpoint import linear_shapes, tensor_shapes
    from unlearn_audit.quantize.diagnostic import comparable_layers, weight_diff
    from unlearn_audit.support.home import home
    from unlearn_audit.support.resources import peak_rss_mb

    original, nudged = build(home() / "bench", args.layers)
    linear = sum(a * b for a, b in linear_shapes(tensor_shapes(original)).values())
    _, _, names = comparable_layers(nudged, original)
    print(f"model: {original.name}, {linear / 1e9:.2f}B linear weights in {len(names)} matrices, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    results = {}
    for title, variants in (("audit default (rtn:8,rtn:4)", "rtn:8,rtn:4"),
                            ("diff default (rtn:4,rtn:8,bnb:fp4,bnb:nf4,bnb:int8)", "rtn:4,rtn:8,bnb:fp4,bnb:nf4,bnb:int8")):
        started = time.time()
        result = weight_diff(nudged, original, parse_variants([variants]), run_dtype="float32", device=args.device)
        seconds = time.time() - started
        rate = linear / seconds
        results[title] = {"seconds": round(seconds, 1), "weights_per_second": round(rate),
                          "projected_7b_minutes": round(LINEAR_7B / rate / 60, 1),
                          "projected_70b_minutes": round(LINEAR_70B / rate / 60, 1),
                          "rtn:4 same level": result.overall["rtn:4:g128"]["same_code_of_moved"],
                          "rtn:4 reading": result.overall["rtn:4:g128"]["reading"]}
        print(f"{title}: {seconds:.1f} s, {rate / 1e6:.1f}M weights/s; projected Llama-2-7B "
              f"{LINEAR_7B / rate / 60:.1f} min, 70B {LINEAR_70B / rate / 60:.1f} min; rtn:4 same level "
              f"{result.overall['rtn:4:g128']['same_code_of_moved'] * 100:.2f}% ({result.overall['rtn:4:g128']['reading']})")
    print(f"peak resident memory {peak_rss_mb():.0f} MiB")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
