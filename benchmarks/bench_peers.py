"""The peers' speed beside ours: the same WMDP, MMLU and TOFU items on the same model through each peer's own code
and through unlearn-audit, in one run; seconds, items per second, peak memory and whether every figure agrees.

    python benchmarks/bench_peers.py                          # the miniature worlds' originals
    python benchmarks/bench_peers.py --model smollm2          # SmolLM2-135M-Instruct on the same items
    python benchmarks/bench_peers.py --open-unlearning-python /venv/bin/python --open-unlearning PATH/TO/checkout

Each job runs in its own process (so peak memory is its own: the process's maximum resident set) and does its work
twice; the second run is timed, from before the model loads to the last figure (so lazy imports are not counted;
every runner loads the same float32 weights on CPU):

* WMDP and MMLU (the WMDP world's 40 + 40 four-choice items): lm-evaluation-harness's ``simple_evaluate`` with its
  ``hf`` model and shipped ``wmdp``/``mmlu`` templates at its defaults (batch size 8), against unlearn-audit's
  WMDP probe on its ``hf`` engine (batch size 8, as lm-eval; the tool's own default is automatic).
* TOFU (the TOFU world's forget, retain, real-authors and world-facts sets): open-unlearning's ``TOFUEvaluator``
  with its ``eval/tofu`` configs limited to the figures the tool computes (forget probability, ROUGE and truth
  ratio, model utility; its batch size 32), run from a checkout with its own Python (it does not install beside
  this project: see ``benchmarks/peers/open_unlearning_tofu.py``), against the tool's four TOFU probes.

"agree" compares the figures: accuracies equal and every log-likelihood within 1e-4 (WMDP/MMLU); every ROUGE equal
and the probability, truth ratio and utility within 1e-4 relative (TOFU). vLLM is not compared here: on CPU it
runs in its own environment (see ``benchmarks/bench_vllm.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _snapshot(hub: Path, repo: str, kind: str = "models") -> Path:
    folder = hub / f"{kind}--miniature--{repo}"
    return folder / "snapshots" / (folder / "refs" / "main").read_text().strip()


def _model_path(model: str, world_hub: Path, repo: str) -> Path:
    if model == "miniature":
        return _snapshot(world_hub, repo)
    from bench_real import build_smollm2

    from unlearn_audit.support.home import home

    return build_smollm2(home() / "real" / "smollm2-135m")


def _warm(work: Callable[[], T]) -> tuple[T, float]:
    """Run ``work`` twice and time the second run: libraries import lazily (transformers' model classes,
    rouge_score), and what is measured is the work, not the first import."""
    work()
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


# --- jobs (each in its own process) ---------------------------------------------------------------------------

def job_lm_eval(path: str, data: str, utility: str, batch_size: int) -> dict:
    import lm_eval
    from lm_eval import simple_evaluate
    from peers.lm_eval_tasks import task_manager

    manager = task_manager(Path(tempfile.mkdtemp(prefix="lm-eval-tasks-")), Path(data), Path(utility))

    def work() -> dict:
        return simple_evaluate(model="hf", model_args={"pretrained": path, "dtype": "float32"},
                               tasks=["wmdp_mini", "mmlu_mini"], task_manager=manager, device="cpu",
                               batch_size=batch_size, log_samples=True)

    out, seconds = _warm(work)
    result = {"seconds": seconds, "peak_mb": _rss_mb(), "version": lm_eval.__version__ if hasattr(lm_eval, "__version__")
              else "", "figures": {}}
    for task, name in (("wmdp_mini", "wmdp"), ("mmlu_mini", "mmlu")):
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        result["figures"][name] = {"acc": out["results"][task]["acc,none"],
                                   "lls": [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]}
    return result


def job_tool_wmdp(path: str, data: str, utility: str, batch_size: int) -> dict:
    from unlearn_audit.engines.hf import HFEngine as Engine
    from unlearn_audit.inputs.data import load_forget_data
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.models import load_model
    from unlearn_audit.inputs.spec import parse_spec
    from unlearn_audit.probes import wmdp

    spec = parse_spec({"benchmark": "wmdp", "dataset": "miniature/wmdp",
                       "mmlu": {"dataset": "miniature/mmlu", "configs": ["stories"]}}, "bench")
    items = load_forget_data(Path(data), spec, utility=Path(utility))

    def work() -> dict:
        loaded = load_model(resolve(path))
        engine = Engine(loaded.model, loaded.tokenizer, batch_size=batch_size)
        return {name: wmdp.probe(engine, part, f"{name}_acc") for name, part in (("wmdp", items.wmdp),
                                                                                  ("mmlu", items.mmlu))}

    outs, seconds = _warm(work)
    return {"seconds": seconds, "peak_mb": _rss_mb(), "figures": {
        name: {"acc": float(out.scores().mean()), "lls": [i.extra["loglikelihoods"] for i in out.items]}
        for name, out in outs.items()}}


TOFU_FIGURES = {"forget_Q_A_Prob": "tofu_prob_f", "forget_Q_A_ROUGE": "tofu_rouge_f",
                "forget_truth_ratio": "tofu_tr_f", "model_utility": "tofu_utility"}


def job_open_unlearning(path: str, data: str, checkout: str, batch_size: int) -> dict:
    sys.path.insert(0, str(Path(checkout) / "src"))
    scratch = Path(tempfile.mkdtemp(prefix="open-unlearning-"))
    (scratch / "locuslab").mkdir()
    (scratch / "locuslab" / "TOFU").symlink_to(data)
    os.chdir(scratch)
    from evals import get_evaluators
    from hydra import compose, initialize_config_dir
    from model import get_model
    from omegaconf import open_dict

    overrides = ["experiment=eval/tofu/default", "model=Llama-2-7b-hf", "task_name=bench",
                 f"model.model_args.pretrained_model_name_or_path={path}",
                 f"model.tokenizer_args.pretrained_model_name_or_path={path}",
                 "model.model_args.attn_implementation=sdpa", "model.model_args.torch_dtype=float32",
                 "model.model_args.device_map=cpu", f"paths.output_dir={scratch / 'out'}",
                 f"eval.tofu.output_dir={scratch / 'out'}", "eval.tofu.overwrite=true"]
    if batch_size:
        overrides.append(f"eval.tofu.batch_size={batch_size}")
    with initialize_config_dir(config_dir=str(Path(checkout) / "configs"), version_base=None):
        cfg = compose(config_name="eval.yaml", overrides=overrides)
    with open_dict(cfg):
        for name in list(cfg.eval.tofu.metrics):
            if name not in TOFU_FIGURES:
                del cfg.eval.tofu.metrics[name]

    def work() -> None:
        model, tokenizer = get_model(cfg.model.copy())  # it pops entries from the config it is given
        for evaluator in get_evaluators(cfg.eval).values():
            evaluator.evaluate(model=model, tokenizer=tokenizer, template_args=cfg.model.template_args)

    _, seconds = _warm(work)
    logs = json.loads((scratch / "out" / "TOFU_EVAL.json").read_text())
    return {"seconds": seconds, "peak_mb": _rss_mb(),
            "figures": {TOFU_FIGURES[k]: logs[k]["agg_value"] for k in TOFU_FIGURES},
            "rouge": [v["rougeL_recall"] for _, v in sorted(logs["forget_Q_A_ROUGE"]["value_by_index"].items(),
                                                           key=lambda kv: int(kv[0]))]}


def job_tool_tofu(path: str, data: str, checkout: str, batch_size: int) -> dict:
    from types import SimpleNamespace

    from unlearn_audit.analysis.figures import FULL, Reference, analyse
    from unlearn_audit.engines.hf import HFEngine as Engine
    from unlearn_audit.inputs.data import load_forget_data
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.models import load_model
    from unlearn_audit.inputs.spec import TofuSpec, parse_spec
    from unlearn_audit.probes import tofu

    items = load_forget_data(Path(data), parse_spec({"benchmark": "tofu", "dataset": "miniature/tofu"}, "bench"))
    settings = SimpleNamespace(**TofuSpec().model_dump())

    def work() -> dict:
        loaded = load_model(resolve(path))
        engine = Engine(loaded.model, loaded.tokenizer, batch_size=batch_size or None)
        return {metric: tofu.probe(engine, items.tofu[part], metric, settings, False)
                for part, metric in tofu.SETS.items()}

    outputs, seconds = _warm(work)
    values = analyse({"original": {FULL: outputs}, "unlearned": {FULL: outputs}}, Reference("default", None, "bench"), min_gap=10,
                     resamples=2).values["original"][FULL]
    return {"seconds": seconds, "peak_mb": _rss_mb(), "items": sum(len(items.tofu[p].questions) for p in tofu.SETS),
            "figures": {m: values[m].value / 100 for m in TOFU_FIGURES.values()},
            "rouge": [float(i.score) for i in outputs["tofu_f"].items]}


JOBS = {"lm-eval": job_lm_eval, "tool-wmdp": job_tool_wmdp, "open-unlearning": job_open_unlearning,
        "tool-tofu": job_tool_tofu}


def _run(python: str, job: str, *args: object) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([python, __file__, "--job", job, *map(str, args)], capture_output=True, text=True, env=env,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{\"job\"")]
    if proc.returncode or not lines:
        raise SystemExit(f"{job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])["result"]


def _cut_dataset(folder: Path, n: int) -> Path:
    """A copy of a TOFU-layout folder (JSON Lines files and the card) with the first ``n`` rows of every file."""
    cut = Path(tempfile.mkdtemp(prefix="tofu-cut-"))
    for file in folder.iterdir():
        text = file.read_text()
        (cut / file.name).write_text("".join(text.splitlines(keepends=True)[:n]) if file.suffix == ".json" else text)
    return cut


def _agree_choices(ours: dict, theirs: dict) -> tuple[bool, float]:
    gap = max(abs(a - b) for name in ("wmdp", "mmlu") for x, y in zip(ours[name]["lls"], theirs[name]["lls"])
              for a, b in zip(x, y))
    same = all(ours[n]["acc"] == theirs[n]["acc"] for n in ("wmdp", "mmlu"))
    return same and gap <= 1e-4, gap


def _agree_tofu(ours: dict, theirs: dict) -> tuple[bool, float]:
    rel = max(abs(ours["figures"][m] - theirs["figures"][m]) / max(abs(theirs["figures"][m]), 1e-12)
              for m in theirs["figures"])
    return ours["rouge"] == theirs["rouge"] and rel <= 1e-4, rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("miniature", "smollm2"), default="miniature")
    parser.add_argument("--open-unlearning", type=Path, help="a checkout of locuslab/open-unlearning (TOFU rows)")
    parser.add_argument("--open-unlearning-python", default=sys.executable,
                        help="the Python that runs it (with hydra-core and hydra_colorlog)")
    parser.add_argument("--tofu-items", type=int, help="only the first N items of each TOFU set (both runners read "
                                                        "the same cut copy of the dataset)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        *strings, batch = args.args
        print(json.dumps({"job": args.job, "result": JOBS[args.job](*strings, int(batch))}), flush=True)
        return

    from unlearn_audit.miniature.worlds import build_world

    rows = []
    wmdp_world = build_world("wmdp")
    data, utility = (_snapshot(wmdp_world.hub_cache, n, "datasets") for n in ("wmdp", "mmlu"))
    path = _model_path(args.model, wmdp_world.hub_cache, "wmdp-original")
    theirs = _run(sys.executable, "lm-eval", path, data, utility, 8)
    ours = _run(sys.executable, "tool-wmdp", path, data, utility, 8)
    agree, gap = _agree_choices(ours["figures"], theirs["figures"])
    n = 2 * len(ours["figures"]["wmdp"]["lls"])
    for who, r in (("lm-eval 0.4.13 (hf)", theirs), ("unlearn-audit (hf)", ours)):
        rows.append({"benchmark": "WMDP + MMLU", "model": args.model, "runner": who, "items": n, **r,
                     "items_per_s": n / r["seconds"], "agree": agree, "largest_gap": gap})
    if args.open_unlearning:
        tofu_world = build_world("tofu")
        data = _snapshot(tofu_world.hub_cache, "tofu", "datasets")
        if args.tofu_items:
            data = _cut_dataset(data, args.tofu_items)
        path = _model_path(args.model, tofu_world.hub_cache, "tofu-original")
        theirs = _run(args.open_unlearning_python, "open-unlearning", path, data, args.open_unlearning.resolve(), 0)
        ours = _run(sys.executable, "tool-tofu", path, data, "-", 0)
        agree, gap = _agree_tofu(ours, theirs)
        n = ours.pop("items")
        for who, r in (("open-unlearning (TOFUEvaluator)", theirs), ("unlearn-audit (hf)", ours)):
            rows.append({"benchmark": "TOFU (4 sets)", "model": args.model, "runner": who, "items": n, **r,
                         "items_per_s": n / r["seconds"], "agree": agree, "largest_gap": gap})
    print("| benchmark | model | runner | items | seconds | items/s | peak RSS MB | figures agree (largest gap) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['model']} | {r['runner']} | {r['items']} | {r['seconds']:.1f} | "
              f"{r['items_per_s']:.1f} | {r['peak_mb']:.0f} | {'yes' if r['agree'] else 'NO'} "
              f"({r['largest_gap']:.1e}) |")
    if args.json:
        for r in rows:
            r.pop("figures", None)
            r.pop("rouge", None)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
