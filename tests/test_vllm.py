"""--engine vllm: the same audit through vLLM as through transformers. The equivalence tests are marked
``vllm`` and run in .venv-vllm (make vllm; make test runs them there); the bad-input tests run everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app

runner = CliRunner()


@pytest.mark.skipif(find_spec("vllm") is not None, reason="vLLM is installed here: the missing-vLLM message "
                    "is checked in environments without it (the main one)")
def test_engine_vllm_without_vllm_names_the_install_command(world, tmp_path):
    result = runner.invoke(app, ["check", "miniature/fragile", "--engine", "vllm", "--cache-dir", str(world.hub_cache),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "needs vLLM" in result.output and "make vllm" in result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_vllm_settings_without_the_vllm_engine_are_refused(world, tmp_path):
    result = runner.invoke(app, ["check", "miniature/fragile", "--tensor-parallel", "2", "--cache-dir",
                                 str(world.hub_cache), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "add --engine vllm" in result.output


def _audit(world, out: Path, name: str, engine: str) -> dict:
    """The audit as a user runs it, in a subprocess (vLLM spawns its engine process from __main__)."""
    env = {**os.environ}
    done = subprocess.run([sys.executable, "-m", "unlearn_audit.cli", "check", f"miniature/{name}", "--engine", engine,
                           "--quant", "rtn:4", "--max-items", "20", "--no-cache", "--cache-dir", str(world.hub_cache),
                           "--out", str(out), "--format", "json"], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode in (0, 1, 4), done.stderr[-3000:]
    if engine == "vllm":  # vLLM's log and progress bars stay off the terminal
        assert "INFO" not in done.stderr and "Loading safetensors" not in done.stderr, done.stderr[-2000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.vllm
@pytest.mark.parametrize("name", ["fragile", "robust"])
def test_vllm_and_hf_give_the_same_audit(world, tmp_path, name):
    """Greedy generations identical (float32), Min-K% scores and the loss screen's item losses within 1e-3, every
    headline figure within 0.5 point, the same verdict; the record names the engine, its version and parallel
    settings."""
    vllm, hf = (_audit(world, tmp_path / e, name, e) for e in ("vllm", "hf"))
    assert vllm["verdict"]["decision"] == hf["verdict"]["decision"]
    runs = {(r["role"], r["variant"]): r for r in hf["runs"]}
    generations = same = 0
    for run in vllm["runs"]:
        other = runs[(run["role"], run["variant"])]
        for metric, items in run["items"].items():
            theirs = {i["id"]: i for i in other["items"][metric]}
            for item in items:
                if item.get("generation") is not None:
                    generations += 1
                    same += item["generation"] == theirs[item["id"]]["generation"]
                if metric in ("privleak", "screen_f", "screen_h"):  # Min-K% scores, the screen's losses (nats)
                    assert abs(item["score"] - theirs[item["id"]]["score"]) < 1e-3, (metric, item["id"])
        for metric, value in run["metrics"].items():
            if value["value"] is not None:
                scale = 100 if metric.endswith(("auc", "tpr1", "tpr5")) else 1
                assert abs(value["value"] - other["metrics"][metric]["value"]) * scale <= 0.5, (run["variant"], metric)
    assert generations > 100 and same == generations
    batches = next(iter(vllm["execution"]["batches"].values()))
    assert batches["engine"] == "vllm" and batches["version"] and batches["tensor_parallel"] == 1
    assert vllm["config"]["probes"]["engine"] == "vllm"


@pytest.mark.vllm
def test_vllm_refuses_variants_it_does_not_serve_and_bad_parallel_sizes(world, tmp_path):
    result = runner.invoke(app, ["check", "miniature/fragile", "--engine", "vllm", "--quant", "bnb:nf4",
                                 "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--engine hf" in result.output
    done = subprocess.run([sys.executable, "-m", "unlearn_audit.cli", "check", "miniature/fragile", "--engine", "vllm",
                           "--quant", "rtn:4", "--max-items", "2", "--min-items", "1", "--tensor-parallel", "64",
                           "--no-cache", "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 3, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "vLLM refused to start" in lines[0], done.stderr[-2000:]


SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer
from unlearn_audit.probes import wmdp
from unlearn_audit.engines.hf import HFEngine as Engine
from unlearn_audit.engines.vllm import VLLMEngine

if __name__ == "__main__":
    folder = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    pairs = [wmdp.encode_pair(tok, wmdp.context(q, ["cake", "soup", "bread", "tea"], "biology"), " " + letter)
             for q in ("Who is the mayor?", "How many days of repairs did the old library need?") for letter in "ABCD"]
    engine = VLLMEngine(model, tok, source=folder)
    try:
        theirs = engine.continuation_logprobs(pairs)
    finally:
        engine.close()
    ours = Engine(model, tok, batch_size=3).continuation_logprobs(pairs)
    print(json.dumps({"vllm": [list(map(float, x)) for x in theirs], "hf": [list(map(float, x)) for x in ours]}))
"""


@pytest.mark.vllm
def test_vllm_continuation_logprobs_equal_the_hf_engine(world, tmp_path):
    """WMDP and TOFU score continuations: vLLM's prompt log-probabilities of each continuation token equal the hf
    engine's (float32, the miniature's original), token for token."""
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    folder = next((world.hub_cache / "models--miniature--original" / "snapshots").iterdir())
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["vllm"]) == 8
    for theirs, ours in zip(result["vllm"], result["hf"]):
        assert len(theirs) == len(ours) >= 1
        assert max(abs(a - b) for a, b in zip(theirs, ours)) < 1e-3
