"""The fault matrix (docs/faults.md): an interrupt (SIGINT, as Python raises it) and running out of memory injected
at each stage of an audit of the miniature, through the CLI. Every cell ends in one line with exit 3 naming the
fault, no report and no temporary file in the output folder, and a rerun of the same command gives the record an
uninterrupted run gives (checked after the interrupt; out of memory stops the audit at the same point)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.report.record import comparable

runner = CliRunner()
ARGS = ["check", "miniature/fragile", "--quant", "rtn:4", "--attack", "prune:0.2", "--max-items", "4",
        "--min-items", "1"]

STAGES = {
    "resolve": ("unlearn_audit.auditing.planning", "plan"),
    "download": ("unlearn_audit.auditing.fetching", "fetch"),
    "load": ("unlearn_audit.auditing.runs", "_load"),
    "quantize": ("unlearn_audit.quantize.rtn", "RTNQuantizer.apply"),
    "attack": ("unlearn_audit.attacks.prune", "MagnitudePrune.attack"),
    "record": ("unlearn_audit.auditing.recording", "record"),
}
FAULTS = {"sigint": (KeyboardInterrupt, "interrupted"),
          "oom": (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out of memory")}


def _run(world, out: Path, results: Path):
    return runner.invoke(app, [*ARGS, "--cache-dir", str(world.hub_cache), "--results-dir", str(results),
                               "--out", str(out)])


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted record."""
    out = tmp_path_factory.mktemp("fault-reference")
    result = _run(world, out, out / "results")
    assert result.exit_code in (0, 1, 4), result.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_fault_at_each_stage(world, tmp_path, monkeypatch, reference, stage, fault):
    import importlib

    module_name, attribute = STAGES[stage]
    module = importlib.import_module(module_name)
    owner, name = (getattr(module, attribute.split(".")[0]), attribute.split(".")[1]) if "." in attribute \
        else (module, attribute)
    make, fragment = FAULTS[fault]

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        raise make()

    out, results = tmp_path / "out", tmp_path / "results"
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, boom)
        result = _run(world, out, results)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0] and "Fix:" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (out / "report.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written anywhere
    if fault == "oom":
        return  # it stops the audit at the same point as the interrupt: the rerun below is the same
    again = _run(world, out, results)  # the fault gone: the same record as an uninterrupted run
    assert again.exit_code in (0, 1, 4), again.output
    assert _same(json.loads((out / "report.json").read_text())) == _same(reference)


def _same(record: dict) -> dict:
    """What two executions of the same audit share, less the folders this test chose."""
    data = comparable(record)
    data["config"] = {k: v for k, v in data["config"].items() if k not in ("out_dir", "results_dir")}
    return data


KILL_AT = {**STAGES, "writing a cache entry": ("unlearn_audit.report.record", "os.replace"),
           "writing the report": ("unlearn_audit.report.record", "os.replace")}
"""The two writes are killed between the temporary file and its rename (``write_atomic``); with the cache on, the
first such rename is a cache entry's, with ``--no-cache`` it is the report's."""


@pytest.mark.parametrize("stage", list(KILL_AT))
def test_sigkill_at_each_stage(world, tmp_path, reference, stage):
    """SIGKILL (nothing runs after it) at each stage, the last one between writing report.json's temporary file and
    renaming it: no report.json under its name, and a rerun gives the uninterrupted record."""
    import subprocess
    import sys

    module_name, attribute = KILL_AT[stage]
    owner, _, name = attribute.rpartition(".")
    target = f"m.{owner}" if owner else "m"
    script = (f"import os, signal, importlib\n"
              f"m = importlib.import_module({module_name!r})\n"
              f"setattr({target}, {name!r}, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))\n"
              f"from unlearn_audit.cli import main\n"
              f"main()\n")
    out, results = tmp_path / "out", tmp_path / "results"
    argv = [*ARGS, "--cache-dir", str(world.hub_cache), "--results-dir", str(results), "--out", str(out),
            *(["--no-cache"] if stage == "writing the report" else [])]
    killed = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "report.json").exists()
    for entry in results.rglob("*.json") if results.exists() else []:  # every cache entry whole
        json.loads(entry.read_text())
    again = _run(world, out, results)
    assert again.exit_code in (0, 1, 4), again.output
    assert _same(json.loads((out / "report.json").read_text())) == _same(reference)
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not left, f"a killed write's temporary file is left: {left}"


def test_the_network_gone_mid_download(world, tmp_path, monkeypatch, reference):
    """The connection breaks off while the weights download (httpx's ReadError, as huggingface_hub's client raises
    it): one line naming the download, exit 3, nothing written; the rerun gives the uninterrupted record."""
    import httpx2
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        if any(str(p).endswith(".safetensors") for p in kwargs.get("allow_patterns") or []):
            raise httpx2.ReadError("Connection reset by peer")
        return real(*args, **kwargs)

    out, results = tmp_path / "out", tmp_path / "results"
    with monkeypatch.context() as patch:
        patch.setattr(huggingface_hub, "snapshot_download", broken)
        result = _run(world, out, results)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "broke off (ReadError: Connection reset by peer)" in lines[0], result.output
    assert "resumes" in lines[0] and not (out / "report.json").exists()
    again = _run(world, out, results)
    assert again.exit_code in (0, 1, 4), again.output
    assert _same(json.loads((out / "report.json").read_text())) == _same(reference)


@pytest.mark.parametrize("fault,fragment", [("disk full", "No space left on device"), ("sigint", "interrupted")])
def test_a_fault_while_writing_a_cache_entry(world, tmp_path, monkeypatch, reference, fault, fragment):
    """The disk fills, or an interrupt comes, while the first cache entry is written (its fsync): one line, exit 3,
    no entry and no temporary file left in the cache, and the rerun gives the uninterrupted record."""
    import errno

    import unlearn_audit.report.record as record

    def failing(fd):  # noqa: ANN001
        if fault == "sigint":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    out, results = tmp_path / "out", tmp_path / "results"
    with monkeypatch.context() as patch:
        patch.setattr(record.os, "fsync", failing)
        result = _run(world, out, results)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0] and "Fix:" in lines[0], result.output
    assert not list(results.rglob("*.json")) and not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "report.json").exists()
    again = _run(world, out, results)
    assert again.exit_code in (0, 1, 4), again.output
    assert _same(json.loads((out / "report.json").read_text())) == _same(reference)
