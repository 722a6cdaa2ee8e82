"""What each quantizer costs: the wall time of making one variant of a model, as the audit makes it (a weights-stage
variant on a copy of the loaded model, a load-stage one by loading through transformers, GGUF by converting,
quantizing with llama.cpp and reading back), on this machine's threads.

    python benchmarks/bench_quantizers.py                          # SmolLM2-135M-Instruct (built from its wheel)
    python benchmarks/bench_quantizers.py --model miniature --quant deploy,hqq:4:g64,mlx:4:g64
    python benchmarks/bench_quantizers.py --json benchmarks/results/quantizer-cost-smollm2.json

Each variant is made ``--repeat`` times (default 2) and the faster kept; the first also pays for imports.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT = "rtn:4,bnb:nf4,bnb:fp4,fp8:block128,fp8:channel,mxfp4,mxfp4:mlx,nvfp4,nvfp4:mlx,mlx:4:g64,hqq:4:g64," \
          "gguf:q4_k_m,gguf:iq4_xs"


def _model_folder(which: str) -> Path:
    if which == "smollm2":
        from bench_real import build_smollm2

        from unlearn_audit.support.home import home

        return build_smollm2(home() / "real" / "smollm2-135m")
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.miniature.build import build_miniature

    world = build_miniature()
    return resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "miniature"), default="smollm2")
    parser.add_argument("--quant", default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from unlearn_audit.quantize import parse_variants
    from unlearn_audit.support.noise import quiet_transformers

    quiet_transformers()
    folder = _model_folder(args.model)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    params = sum(p.numel() for p in base.parameters())
    rows = []
    for quantizer in parse_variants(args.quant.split(",")):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            if quantizer.stage == "load":
                model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantizer.load_config(),
                                                             dtype=torch.float32)
            else:
                model = copy.deepcopy(base)
            result = quantizer.apply(model)
            times.append(time.perf_counter() - start)
            del model
        rows.append({"variant": quantizer.label, "seconds": round(min(times), 2), "stage": quantizer.stage,
                     "layers": result.proof.layers_quantized})
        print(f"{quantizer.label:<22} {min(times):7.2f} s  ({quantizer.stage}, {result.proof.layers_quantized} layers)",
              flush=True)
    meta = {"model": args.model, "parameters": params, "threads": torch.get_num_threads(), "repeat": args.repeat,
            "note": "weights stage includes the deepcopy of the loaded model; load stage the load from disk"}
    if args.json:
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
