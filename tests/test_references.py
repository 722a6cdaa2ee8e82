"""References that hold on real models: the holdout floor, a reference model when no retrain exists, and the
reference under the same attack (net recovery)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from unlearn_audit.cli import app

STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"
runner = CliRunner()


def _check(world, args: list[str], out: Path) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["check", *args, "--cache-dir", str(world.hub_cache), "--out", str(out),
                                 "--format", "json,md,html"])
    record = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return result.exit_code, record, result.output


def test_real_model_audited_against_itself_is_inconclusive_by_the_holdout_floor(world, tmp_path):
    """stories260K never saw the miniature's news: its VerbMem on the forget set (about 5) is its VerbMem on
    held-out news. Against a floor of 0 and a small --min-gap that read as 100% kept (FAIL); the floor says
    it is no memory at all."""
    model = tmp_path / "stories"
    shutil.copytree(STORIES, model, ignore=shutil.ignore_patterns("*.py", "*.md", "LICENSE"))
    code, record, output = _check(world, [str(model), "--original", str(model), "--forget", "miniature/news",
                                          "--quant", "rtn:4", "--min-gap", "1"], tmp_path / "out")
    assert code == 4, output
    assert record["verdict"]["decision"] == "INCONCLUSIVE"
    reasons = " ".join(record["verdict"]["reasons"])
    assert "the holdout floor" in reasons and "no more memory of the forget set than of unseen text" in reasons
    assert "judged only when VerbMem shows memory above the holdout floor" in reasons  # PrivLeak vs a constant
    assert record["reference"]["source"] == "default" and record["reference"]["strength"].startswith("weakest")
    floor = record["reference"]["floors"]["verbmem_f"]["original"]["value"]
    assert floor > 0  # a fluent model overlaps with text it never saw
    assert record["reference"]["values"]["verbmem_f"]["value"] == floor  # the residual is read above it
    assert record["data_counts"]["verbmem_holdout"] > 20
    assert "Holdout floor" in (tmp_path / "out" / "report.md").read_text()


def _spec(tmp_path: Path, reference: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"spec_version: 1\ndataset: miniature/news\noriginal: miniature/original\nreference: {reference}\n")
    return spec


def test_drift_that_explains_the_whole_recovery_nets_to_zero(world, tmp_path):
    """With the unlearned model itself as the reference, 4-bit RTN moves the reference exactly as far as it
    moves the unlearned model: the gross recovery is 100%, the net one 0."""
    code, record, output = _check(world, ["miniature/fragile", "--spec", str(_spec(tmp_path, "miniature/fragile")),
                                          "--quant", "rtn:4", "--max-items", "20"], tmp_path / "out")
    assert code in (0, 4), output  # no longer FAIL: nothing is recovered beyond the reference's own drift
    gross = {s["metric"]: s for s in record["recoveries"]}
    net = {s["metric"]: s for s in record["net_recoveries"]}
    assert gross["verbmem_f"]["value"] > 0.9
    for metric in ("verbmem_f", "knowmem_f", "privleak"):
        if net[metric]["value"] is not None:
            assert abs(net[metric]["value"]) < 1e-9
            assert net[metric]["drift"]["value"] != 0  # the whole apparent recovery is drift
    roles = {(r["role"], r["variant"]) for r in record["runs"]}
    assert ("reference", "rtn:4:g128") in roles  # the reference under the same attack


def test_reference_model_without_retrain_is_named_and_quantized(world, tmp_path):
    code, record, output = _check(world, ["miniature/fragile", "--spec", str(_spec(tmp_path, "miniature/retrain")),
                                          "--quant", "rtn:4"], tmp_path / "out")
    assert code == 1, output  # fragile still fails: its 4-bit recovery is far beyond the reference's drift
    assert record["reference"]["source"] == "reference"
    assert "miniature/retrain" in record["reference"]["description"]
    assert record["models"]["reference"]["found_by"] == "from the spec's reference"
    net = {s["metric"]: s for s in record["net_recoveries"]}
    assert net["verbmem_f"]["value"] > 0.9 and net["verbmem_f"]["status"] == "exceeds"
    assert "net of the reference model's own drift" in record["verdict"]["headline"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "net recovery" in html and "reference drift" in html
