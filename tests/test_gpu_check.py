"""The device check (benchmarks/gpu_check.sh) runs the same code on the CPU with a tiny model, so the script
that is handed to a GPU machine once per session is known to work before it gets there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    env = {**os.environ, "SHAPE": "tiny", "DEVICE": "cpu", "OUT": str(tmp_path / "out"), "MAX_ITEMS": "3",
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["shape"] == "tiny" and summary["device"] == "cpu" and summary["parameters"] > 0
    assert set(summary["phase_seconds"]) >= {"resolve", "fetch", "weight_diagnostic"}
    runs = summary["run_seconds"]
    assert sorted(runs) == sorted(f"{role}/{v}" for role in ("unlearned", "original")
                                  for v in ("full", "rtn:8:g128", "rtn:4:g128", "bnb:nf4", "bnb:int8")), runs
    for title, batches in summary["batches"].items():  # batch size chosen automatically, per run
        assert batches["batch_size"] == 16 and batches["token_budget"] > 0 and batches["scoring"] == "chunked", title
    assert summary["peak_rss_mb"] > 0 and summary["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert (tmp_path / "out" / "report.json").is_file()
