"""The CLI end to end on the miniature world, through the real resolution and loading code.

The audits themselves run once per session (see the ``audits`` fixture in conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app

runner = CliRunner()


def _record(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _recovery(record: dict, metric: str, variant: str) -> dict:
    return next(r for r in record["recoveries"] if r["metric"] == metric and r["variant"] == variant)


def test_fragile_checkpoint_fails_because_4bit_brings_memory_back(audits):
    result, out = audits["fragile"]
    assert result.exit_code == 1, result.output
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html"}
    record = _record(out)
    assert record["schema_version"] == 5
    assert record["verdict"]["decision"] == "FAIL"
    for metric in ("verbmem_f", "knowmem_f"):
        assert _recovery(record, metric, "rtn:4:g128")["value"] >= 0.8
        assert _recovery(record, metric, "rtn:8:g128")["value"] <= 0.2
        residual = next(r for r in record["residuals"] if r["metric"] == metric)
        assert residual["status"] == "ok"  # it does look clean at full precision
    assert "FAIL" in result.output


def test_robust_checkpoint_passes(audits):
    result, out = audits["robust"]
    assert result.exit_code == 0, result.output
    record = _record(out)
    assert record["verdict"]["decision"] == "PASS"
    # judged net of the retrained model's own drift under each variant; the gross figures are reported beside
    assert all(r["status"] == "ok" for r in record["net_recoveries"] if r["metric"] in ("verbmem_f", "knowmem_f"))
    assert all(r["status"] == "reported" for r in record["recoveries"] if r["metric"] in ("verbmem_f", "knowmem_f"))


def test_record_names_what_was_audited(audits, world):
    record = _record(audits["fragile"][1])
    assert record["models"]["unlearned"]["repo"]["commit"] == world.info["commits"]["miniature/fragile"]
    assert record["models"]["original"]["repo"]["repo_id"] == "miniature/original"
    assert record["models"]["retrain"]["repo"]["repo_id"] == "miniature/retrain"
    assert record["dataset"]["commit"] == world.info["commits"]["miniature/news"]
    assert record["spec_source"] == "unlearn_audit.yaml in miniature/fragile"
    assert record["reference"]["source"] == "retrain"
    assert {"torch", "transformers", "huggingface_hub"} <= set(record["environment"]["packages"])
    four_bit = next(r for r in record["runs"] if r["role"] == "unlearned" and r["variant"] == "rtn:4:g128")
    assert four_bit["proof"]["layers_quantized"] == 28 and four_bit["proof"]["max_levels"] <= 16
    assert four_bit["settings"]["group_size"] == 128
    verbmem_items = four_bit["items"]["verbmem_f"]
    assert len(verbmem_items) == record["data_counts"]["verbmem"]
    assert {"prompt", "reference", "generation", "score"} <= set(verbmem_items[0])


def test_reports_render_the_verdict_and_rerender_from_the_record(audits, tmp_path):
    _, out = audits["fragile"]
    record = _record(out)
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert record["verdict"]["headline"] in md
    assert html.lower().count("<script") == 1  # the passage sorter, allowed by its hash in the CSP
    assert 'class="verdict FAIL"' in html
    result = runner.invoke(app, ["report", str(out / "report.json"), "--format", "md,html", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text() == md
    assert (tmp_path / "report.html").read_text() == html


def test_inconclusive_when_the_original_never_knew(world, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("spec_version: 1\ndataset: miniature/news\noriginal: miniature/retrain\nretrain: miniature/retrain\n")
    result = runner.invoke(app, ["check", "miniature/retrain", "--spec", str(spec), "--quant", "rtn:4",
                                 "--max-items", "8", "--min-items", "1", "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "o")])
    assert result.exit_code == 4, result.output
    assert _record(tmp_path / "o")["verdict"]["decision"] == "INCONCLUSIVE"


@pytest.mark.parametrize("args,message", [
    (["check", "miniature/original"], "no forget-set spec"),
    (["check", "miniature/absent", "--forget", "news"], "not in the local Hub cache"),
    (["check", "miniature/fragile", "--quant", "rtn:12"], "bit width 12 is not supported"),
    (["check", "miniature/fragile", "--forget", "news", "--spec", "x.yaml"], "both --forget and --spec"),
    (["check", "miniature/fragile", "--max-recovery", "3"], "outside [0, 1]"),
    (["check", "miniature/fragile", "--device", "tpu:7"], "unknown device 'tpu:7'"),
    (["check", "miniature/fragile", "--device", "xla"], "no engine for device type 'xla'"),
    (["check", "miniature/fragile", "--device", "cuda:64"], "cuda:64"),
])
def test_bad_input_exits_2_with_one_line(world, tmp_path, args, message):
    result = runner.invoke(app, [*args, "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Fix:" in lines[0], result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "report.json").exists()


def test_console_script_exit_code(world, tmp_path):
    """The installed entry point, as a CI gate calls it."""
    proc = subprocess.run([sys.executable, "-m", "unlearn_audit.cli", "check", "miniature/fragile", "--quant", "rtn:9",
                           "--cache-dir", str(world.hub_cache)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_shows_a_fail_and_a_pass(world, tmp_path):
    """The README's first command (on the already-built miniature)."""
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--quant", "rtn:4"])
    assert result.exit_code == 0, result.output
    assert "miniature/fragile (expected FAIL; a constructed worst case" in result.output
    assert "miniature/robust (expected PASS; unconstrained unlearning)" in result.output
    assert "Made by real unlearning methods" in result.output and "miniature/ga_gdr-lr1e-04-fp32" in result.output
    for name, decision in (("fragile", "FAIL"), ("robust", "PASS")):
        record = _record(tmp_path / name)
        assert record["verdict"]["decision"] == decision
        assert record["variants"] == ["rtn:4:g128", "relearn-unrelated"]  # the demo shows one attack too
        assert "--attack relearn-unrelated" in record["command"]
        assert 'id="tamper-battery"' in (tmp_path / name / "report.html").read_text()


def test_miniature_prints_a_usable_cache_line(world):
    """README: HF_HUB_CACHE=$(unlearn-audit miniature | sed -n 's/^HF_HUB_CACHE=//p')"""
    result = runner.invoke(app, ["miniature"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("HF_HUB_CACHE=")]
    assert lines == [f"HF_HUB_CACHE={world.hub_cache}"]


OUR_LINES = re.compile(r"^(fetching the weights of |weight diagnostic|loading \w+ model |(unlearned|original|retrain|reference)"
                       r" · |calibrating |\w+: reusing |merging the adapter |warning: |(PASS|FAIL|INCONCLUSIVE): |"
                       r"  (json|md|html) |miniature/[\w-]+ \(expected |Audit the \w+ miniature yourself:|  HF_HUB_CACHE=|"
                       r"Made by real unlearning methods |$)")


@pytest.mark.parametrize("command", [
    ["check", "miniature/fragile", "--quant", "rtn:4,bnb:fp4,gptq:4,awq:4", "--max-items", "2", "--min-items", "1",
     "--no-cache"],
    ["demo", "--quant", "rtn:4"],
    ["check", "miniature/fragile", "--quant", "rtn:4", "--attack", "relearn-unrelated:r8:e1:n2,prune:0.2",
     "--max-items", "2", "--min-items", "1", "--no-cache"],  # peft imports GPT-QModel on first use
])
def test_only_our_own_lines_reach_the_terminal(world, tmp_path, command):
    """With every extra installed (GPT-QModel brings torchao), no third-party warning reaches stdout or stderr."""
    pytest.importorskip("gptqmodel")
    env = {**os.environ, "HF_HUB_CACHE": str(world.hub_cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "unlearn_audit.cli", *command, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr
    foreign = [line for line in (proc.stdout + proc.stderr).splitlines() if not OUR_LINES.match(line)]
    assert foreign == [], foreign


def test_device_strings_are_checked_before_any_work():
    """``--device``: what torch cannot parse, a type the tool has no engine for, or an accelerator this machine lacks is
    bad usage (exit 2) naming the accepted forms; what the machine has passes through as given."""
    import torch

    from unlearn_audit.config import AuditConfig, resolve_device
    from unlearn_audit.errors import UsageError

    for bad, said in (("tpu:7", "unknown device"), ("gpu", "unknown device"), ("xla", "no engine"),
                      ("mps", "MPS"), ("cuda:64", "cuda")):
        if bad == "mps" and torch.backends.mps.is_available():
            continue  # only a refusal where the machine lacks it; this machine has it
        with pytest.raises(UsageError) as caught:
            AuditConfig(model="m", forget="news", device=bad)
        assert said in str(caught.value) and "Fix:" in str(caught.value), caught.value
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            resolve_device("cuda")


def test_the_deploy_preset_audits_the_miniature(world, tmp_path):
    """``--quant deploy``: every format of the preset quantizes both models, with its proof, in one audit."""
    from unlearn_audit.quantize import PRESETS, parse_variant

    result = runner.invoke(app, ["check", "miniature/fragile", "--quant", "deploy", "--max-items", "8", "--min-items",
                                 "1", "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "o")])
    assert result.exit_code in (0, 1, 4), result.output
    record = _record(tmp_path / "o")
    labels = [parse_variant(v).label for v in PRESETS["deploy"]]
    assert [v for v in record["variants"] if v != "full"] == labels
    for role in ("unlearned", "original"):
        runs = {r["variant"]: r for r in record["runs"] if r["role"] == role}
        for label in labels:
            assert runs[label]["proof"]["layers_quantized"] >= 28, (role, label)
