"""One audit of a 7B-shaped model on the machine's accelerator, timed phase by phase.

Builds, on the device, a random-init Llama with Llama-2-7B's shape (hidden 4096, MLP 11008, 32 layers,
32 heads, vocabulary 32000; 6.7B parameters in bfloat16) as the "original" and a copy with every linear
weight moved by ±1e-3·|w| (the paper's regime: far below a 4-bit step) as the "unlearned" model, writes
both as safetensors folders, makes the miniature's synthetic MUSE-layout forget set and tokenizer (no
download, no training), and runs the real audit (``unlearn_audit.audit``) with
``rtn:8,rtn:4,bnb:nf4,bnb:int8`` and the default batch size (``auto``). Random weights generate noise, so
the verdict is meaningless; the point is time, batch sizes and memory on real hardware at real scale.

Writes ``OUT/gpu_check.json``: wall time of each step, the audit's phase times and per-run seconds, the
batch sizes and token budgets the engine chose, peak GPU and resident memory, the device's name, and the
record itself (``OUT/report.json``). ``--shape tiny`` runs the same code on a 2-layer model (the test suite
runs it on the CPU).

    python benchmarks/gpu_check.py --out OUT [--shape 7b|1b|tiny] [--device auto] [--max-items 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 512},
}
QUANT = ("rtn:8", "rtn:4", "bnb:nf4", "bnb:int8")
NUDGE = 1e-3


def build_models(root: Path, shape: str, device: str, tokenizer) -> tuple[Path, Path]:  # noqa: ANN001
    """The original and the nudged copy, built on ``device`` in bfloat16 and saved with the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_audit.miniature.nudge import LINEAR_SKIP

    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    original, unlearned = root / "original", root / "unlearned"
    model.save_pretrained(original)
    tokenizer.save_pretrained(original)
    generator = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and name.endswith(".weight") and not any(s in name for s in LINEAR_SKIP):
                sign = torch.randint(0, 2, param.shape, generator=generator, device=device, dtype=torch.int8) * 2 - 1
                param.mul_(1 + NUDGE * sign.to(param.dtype))
    model.save_pretrained(unlearned)
    tokenizer.save_pretrained(unlearned)
    (unlearned / "README.md").write_text("---\nbase_model: original\n---\n# gpu check\n")
    del model
    return original, unlearned


def build_dataset(root: Path):  # noqa: ANN201 - (folder, tokenizer)
    """The miniature's synthetic news in MUSE's layout and a BPE tokenizer trained on it (seconds)."""
    from unlearn_audit.miniature.build import dataset_files
    from unlearn_audit.miniature.corpus import make_corpus, qa_text
    from unlearn_audit.miniature.train import build_tokenizer

    corpus = make_corpus(40, 40, 40, seed=1234)
    folder = root / "news"
    for path, data in dataset_files(corpus).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    docs = corpus.forget + corpus.retain + corpus.holdout
    tokenizer = build_tokenizer([d.text for d in docs] + [qa_text(q) for d in docs for q in d.qas], 2048)
    return folder, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-items", type=int, default=20)
    parser.add_argument("--quant", default=",".join(QUANT))
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from unlearn_audit import audit
    from unlearn_audit.config import AuditConfig, ProbeSettings, resolve_device
    from unlearn_audit.report.record import write_atomic
    from unlearn_audit.support.noise import quiet_third_party

    quiet_third_party()
    hf_logging.disable_progress_bar()
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    steps: dict[str, float] = {}
    t = time.time()
    dataset, tokenizer = build_dataset(work)
    steps["dataset_and_tokenizer"] = round(time.time() - t, 1)
    t = time.time()
    original, unlearned = build_models(work, args.shape, device, tokenizer)
    steps["build_models"] = round(time.time() - t, 1)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    config = AuditConfig(model=str(unlearned), original=str(original), forget=str(dataset),
                         quant=tuple(args.quant.split(",")), out_dir=args.out, device=device, cache_results=False,
                         probes=ProbeSettings(max_items=args.max_items, batch_size=None), formats=("json",))
    report = audit(config)
    steps["audit"] = round(time.time() - t, 1)
    record = report.to_dict()
    write_atomic(args.out / "report.json", json.dumps(record, indent=1, default=str))
    execution = record["execution"]
    summary = {
        "shape": args.shape, "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "parameters": record["models"]["unlearned"]["n_parameters"], "dtype": execution["dtype"],
        "variants": list(config.quant), "max_items": args.max_items, "steps_seconds": steps,
        "phase_seconds": execution["phase_seconds"],
        "run_seconds": {f"{r['role']}/{r['variant']}": r["seconds"] for r in record["runs"]},
        "probe_seconds": round(sum(r["seconds"] for r in record["runs"]), 1),
        "batches": execution["batches"], "peak_accelerator_mb": execution["peak_accelerator_mb"],
        "peak_rss_mb": execution["peak_rss_mb"], "verdict": record["verdict"]["decision"],
        "torch": torch.__version__,
    }
    write_atomic(args.out / "gpu_check.json", json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("shape", "device_name", "parameters", "steps_seconds", "phase_seconds",
                                              "probe_seconds", "peak_accelerator_mb", "peak_rss_mb")}, indent=1))


if __name__ == "__main__":
    main()
