"""Run open-unlearning's own TOFU evaluation on the miniature TOFU world and store its figures as a test fixture.

open-unlearning is not on PyPI and its pinned requirements (torch 2.4.1, transformers 4.45) do not install beside
this project's, so the suite cannot run it; this script runs it once, from a checkout of its repository, on the
libraries installed here (plus ``hydra-core``), and writes what its evaluator produced per item:

    pip install hydra-core==1.3.2 hydra_colorlog==1.2.0
    python benchmarks/peers/open_unlearning_tofu.py --checkout PATH/TO/open-unlearning \
        --out tests/fixtures/peers/open_unlearning_tofu.json

Its code runs unchanged: its hydra configs (``experiment=eval/tofu/default``, the base-model template of
``model=Llama-2-7b-hf``) composed with overrides for the model folder, float32 on CPU with SDPA attention, and the
batch size; its ``get_model`` and ``TOFUEvaluator`` (``src/eval.py``'s steps, its seeding written out); the dataset ``locuslab/TOFU`` is the miniature's folder
(linked under that name in a scratch working directory). The retained model runs first; its logs are every
other model's ``retain_logs_path`` (forget quality). ``tests/test_peer_parity.py`` compares the tool with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import fixture

MODELS = ("tofu-retain90", "tofu-original", "tofu-fragile", "tofu-robust")
METRICS = ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "forget_truth_ratio", "forget_quality", "model_utility")
KEEP = {  # what the fixture keeps of each metric's per-item values
    "forget_Q_A_Prob": ("prob", "avg_loss"), "forget_Q_A_ROUGE": ("rougeL_recall", "generation"),
    "forget_truth_ratio": ("score",),
}


def _snapshot(hub: Path, repo: str, kind: str = "models") -> Path:
    folder = hub / f"{kind}--miniature--{repo}"
    return folder / "snapshots" / (folder / "refs" / "main").read_text().strip()


def _seed(seed: int) -> None:
    """What its ``trainer.utils.seed_everything`` does (its ``trainer`` package imports deepspeed, which does not
    install here; greedy decoding makes the seed moot anyway)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True, help="a checkout of locuslab/open-unlearning")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/peers/open_unlearning_tofu.json"))
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    sys.path.insert(0, str(checkout / "src"))
    from unlearn_audit.miniature.worlds import build_world

    world = build_world("tofu")
    scratch = Path(tempfile.mkdtemp(prefix="open-unlearning-"))
    (scratch / "locuslab").mkdir()
    (scratch / "locuslab" / "TOFU").symlink_to(_snapshot(world.hub_cache, "tofu", "datasets"))
    os.chdir(scratch)  # datasets.load_dataset("locuslab/TOFU") finds the local folder first
    from evals import get_evaluators
    from hydra import compose, initialize_config_dir
    from model import get_model

    result = fixture.header("locuslab/open-unlearning", checkout, world.info)
    result["libraries"] = {m: __import__(m).__version__ for m in ("torch", "transformers", "datasets", "hydra")}
    retain_logs = None
    for name in MODELS:
        path = _snapshot(world.hub_cache, name)
        out_dir = scratch / name
        overrides = ["experiment=eval/tofu/default", "model=Llama-2-7b-hf", f"task_name={name}",
                     f"model.model_args.pretrained_model_name_or_path={path}",
                     f"model.tokenizer_args.pretrained_model_name_or_path={path}",
                     "model.model_args.attn_implementation=sdpa", "model.model_args.torch_dtype=float32",
                     "model.model_args.device_map=cpu", f"eval.tofu.batch_size={args.batch_size}",
                     f"paths.output_dir={out_dir}", f"eval.tofu.output_dir={out_dir}",
                     f"retain_logs_path={retain_logs or 'null'}"]
        with initialize_config_dir(config_dir=str(checkout / "configs"), version_base=None):
            cfg = compose(config_name="eval.yaml", overrides=overrides)
        _seed(cfg.seed)
        model, tokenizer = get_model(cfg.model)
        for evaluator in get_evaluators(cfg.eval).values():
            evaluator.evaluate(model=model, tokenizer=tokenizer, template_args=cfg.model.template_args)
        logs = json.loads((out_dir / "TOFU_EVAL.json").read_text())
        if name == "tofu-retain90":
            retain_logs = out_dir / "TOFU_EVAL.json"
        kept = {}
        for metric in METRICS:
            entry = logs.get(metric)
            if entry is None:
                continue
            kept[metric] = {"agg_value": entry["agg_value"]}
            if metric in KEEP:
                kept[metric]["value_by_index"] = {i: {k: v[k] for k in KEEP[metric]} if v else None
                                                  for i, v in entry["value_by_index"].items()}
        result["models"][f"miniature/{name}"] = kept
        print(f"{name}: " + ", ".join(f"{m} {v['agg_value']:.4f}" for m, v in kept.items()
                                      if isinstance(v["agg_value"], float)), flush=True)
    fixture.write(args.out, result)


if __name__ == "__main__":
    main()
