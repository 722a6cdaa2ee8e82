"""``unlearn-audit sweep``: a grid of checkpoints with shared reference runs, per-checkpoint errors, resume, and a
leaderboard whose rows are the checkpoints' own ``check`` records."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.errors import InputError, UsageError
from unlearn_audit.report.record import comparable, judged_recoveries
from unlearn_audit.sweeping import checkpoints_from

runner = CliRunner()
OPTIONS = ["--quant", "rtn:4", "--max-items", "8", "--min-items", "1"]


def test_checkpoints_come_from_a_list_file_or_a_glob(tmp_path):
    listed = tmp_path / "grid.txt"
    listed.write_text("# the grid\norg/a\n\norg/b  # second\n")
    assert checkpoints_from(str(listed)) == ["org/a", "org/b"]
    for name in ("run-2", "run-1"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / "notes.txt").write_text("")
    assert checkpoints_from(str(tmp_path / "runs" / "*")) == [str(tmp_path / "runs" / n) for n in ("run-1", "run-2")]
    listed.write_text("org/a\norg/a\n")
    with pytest.raises(InputError):
        checkpoints_from(str(listed))
    with pytest.raises(UsageError):
        checkpoints_from(str(tmp_path / "missing.txt"))


def test_each_record_says_the_check_or_screen_command_that_reproduces_it():
    from unlearn_audit.sweeping import _command

    sweep = "unlearn-audit sweep grid.txt --quant rtn:4 --triage --ray local --gpus-per-task 0 --no-resume -o out"
    assert _command(sweep, "org/m", Path("out/org_m")) == "unlearn-audit check org/m --quant rtn:4 -o out/org_m"
    assert _command("unlearn-audit sweep 'runs/*'", "runs/a b", Path("o/a"), "screen") \
        == "unlearn-audit screen 'runs/a b' --out o/a"


def _sweep(world, tmp_path: Path, grid: Path, out: Path):  # noqa: ANN001, ANN202
    return runner.invoke(app, ["sweep", str(grid), *OPTIONS, "--cache-dir", str(world.hub_cache),
                               "--results-dir", str(tmp_path / "results"), "--out", str(out)])


def _record(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def _same_audit(a: dict) -> dict:
    """A record without what says where and how it was run."""
    a = comparable(a)
    a["config"] = {k: v for k, v in a["config"].items() if k not in ("out_dir", "command", "results_dir", "cache_results")}
    a.pop("command")
    a["environment"] = {k: v for k, v in a["environment"].items() if k != "argv0"}  # the process: pytest, a Ray worker
    return a


def test_a_sweep_ranks_every_checkpoint_shares_the_reference_runs_and_resumes(world, tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("miniature/fragile\nminiature/robust\nminiature/no-such-model\n")
    out = tmp_path / "sweep"
    result = _sweep(world, tmp_path, grid, out)
    assert result.exit_code == 1, result.output  # fragile is FAIL
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {row["model"]: row for row in board["rows"]}
    assert set(rows) == {"miniature/fragile", "miniature/robust", "miniature/no-such-model"}

    # the failing checkpoint is a row with its one-line error and exit code, last
    missing = rows["miniature/no-such-model"]
    assert missing["decision"] == "ERROR" and missing["exit_code"] == 2 and "\n" not in missing["error"]
    assert missing["rank"] == 3

    # each row is its record's, checked by hand; the ranking follows the largest recovery
    records = {m: _record(out / rows[m]["report"]) for m in ("miniature/fragile", "miniature/robust")}
    for model, record in records.items():
        judged = set(record["thresholds"]["judged"])
        worst = max((s for s in judged_recoveries(record) if s["metric"] in judged and s["value"] is not None),
                    key=lambda s: s["value"])
        assert (rows[model]["worst_recovery"], rows[model]["worst_variant"]) == (worst["value"], worst["variant"])
        assert rows[model]["decision"] == record["verdict"]["decision"]
    assert rows["miniature/robust"]["worst_recovery"] < rows["miniature/fragile"]["worst_recovery"]
    assert [rows[m]["rank"] for m in ("miniature/robust", "miniature/fragile")] == [1, 2]

    # the original's and the retrained model's runs: computed once for the whole sweep, then reused
    computed = [c for r in records.values() for c in r["execution"]["cache"]["computed"]]
    for role in ("original", "retrain"):
        for variant in ("full", "rtn:4:g128"):
            assert computed.count(f"{role}/{variant}") == 1, computed

    # a row equals the record `check` writes with the same options
    alone = tmp_path / "alone"
    done = runner.invoke(app, ["check", "miniature/robust", *OPTIONS, "--cache-dir", str(world.hub_cache),
                               "--no-cache", "--out", str(alone)])
    assert done.exit_code == 0, done.output
    assert _same_audit(_record(alone)) == _same_audit(records["miniature/robust"])

    # the views
    with (out / "leaderboard.csv").open() as f:
        assert [r["model"] for r in csv.DictReader(f)] == [m for m, _ in sorted(rows.items(), key=lambda i: i[1]["rank"])]
    md = (out / "leaderboard.md").read_text()
    assert "| 1 | miniature/robust | PASS |" in md and "no-such-model" in md
    html = (out / "leaderboard.html").read_text()
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    import base64
    import hashlib

    assert f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" in html
    assert html.count("<circle") == 2  # recovery against utility, the audited checkpoints

    # resume: a killed sweep leaves the finished records; only the missing one is audited again
    robust = out / rows["miniature/robust"]["report"]
    (robust / "report.json").unlink()
    again = _sweep(world, tmp_path, grid, out)
    assert again.exit_code == 1, again.output
    rows2 = {row["model"]: row for row in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert rows2["miniature/fragile"]["resumed"] and not rows2["miniature/robust"]["resumed"]
    assert _same_audit(_record(robust)) == _same_audit(records["miniature/robust"])
    assert "kept from an earlier run" in again.output


def test_triage_screens_first_and_probes_only_what_the_screen_does_not_clear(world, tmp_path):
    """The robust checkpoint's screen is PASS: screened only, marked so; the fragile one's is not: fully audited.
    The screen's call is checked against the full audit of the screened-only checkpoint."""
    grid = tmp_path / "grid.txt"
    grid.write_text("miniature/fragile\nminiature/robust\n")
    out = tmp_path / "triaged"
    result = runner.invoke(app, ["sweep", str(grid), *OPTIONS, "--triage", "--cache-dir", str(world.hub_cache),
                                 "--results-dir", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    rows = {row["model"]: row for row in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert rows["miniature/robust"]["screened_only"] and rows["miniature/robust"]["report"].endswith("/screen")
    assert not rows["miniature/fragile"]["screened_only"]
    fragile = _record(out / rows["miniature/fragile"]["report"])
    assert "verbmem_f" in fragile["runs"][0]["metrics"]  # the full probes ran
    screened = _record(out / rows["miniature/robust"]["report"])
    assert set(screened["runs"][0]["metrics"]) <= {"screen_loss", "screen_loss_h"}
    assert "(screened only)" in (out / "leaderboard.md").read_text()
    full = tmp_path / "full"
    done = runner.invoke(app, ["check", "miniature/robust", *OPTIONS, "--cache-dir", str(world.hub_cache),
                               "--no-cache", "--out", str(full)])
    assert _record(full)["verdict"]["decision"] == screened["verdict"]["decision"] == "PASS", done.output


def _close(a, b, path: str = "") -> None:  # noqa: ANN001
    """Equal, floats to 1e-6 relative."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


def test_a_sweep_on_a_local_ray_instance_gives_the_same_records(world, tmp_path):
    """Two checkpoints as Ray tasks on a local instance (a worker per core): the same records as in-process (every
    probe figure equal; the weight diagnostic's float32 sums to 1e-6), the shared runs still computed once."""
    grid = tmp_path / "grid.txt"
    grid.write_text("miniature/fragile\nminiature/robust\n")
    records = {}
    for how, extra in (("local", []), ("ray", ["--ray", "local", "--gpus-per-task", "0"])):
        out = tmp_path / how
        result = runner.invoke(app, ["sweep", str(grid), *OPTIONS, *extra, "--cache-dir", str(world.hub_cache),
                                     "--results-dir", str(tmp_path / f"results-{how}"), "--out", str(out)])
        assert result.exit_code == 1, result.output
        rows = json.loads((out / "leaderboard.json").read_text())["rows"]
        records[how] = {row["model"]: _record(out / row["report"]) for row in rows}
    for model in ("miniature/fragile", "miniature/robust"):
        ray, local = _same_audit(records["ray"][model]), _same_audit(records["local"][model])
        # the weight diagnostic's float32 sums differ in the last bits with the thread count (1 per Ray task here)
        _close(ray.pop("weight_diff"), local.pop("weight_diff"))
        assert ray == local
    computed = [c for r in records["ray"].values() for c in r["execution"]["cache"]["computed"]]
    assert computed.count("original/full") == 1 and computed.count("retrain/rtn:4:g128") == 1


def test_ray_refuses_gpu_tasks_on_a_cluster_without_gpus(world, tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("miniature/robust\n")
    result = runner.invoke(app, ["sweep", str(grid), *OPTIONS, "--ray", "local", "--gpus-per-task", "1",
                                 "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--gpus-per-task 0" in result.output


def test_ray_without_gpus_per_task_follows_the_cluster(world, tmp_path):
    """No --gpus-per-task on a cluster without GPUs: the tasks ask for none (said, and recorded), and the sweep runs."""
    import torch

    grid = tmp_path / "grid.txt"
    grid.write_text("miniature/robust\n")
    result = runner.invoke(app, ["sweep", str(grid), *OPTIONS, "--ray", "local", "--cache-dir", str(world.hub_cache),
                                 "--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")])
    assert result.exit_code in (0, 1, 4), result.output
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    expected = 1.0 if torch.cuda.is_available() else 0.0  # Ray's local instance sees the GPUs torch sees
    assert board["ray"] == {"address": "local", "cluster_gpus": board["ray"]["cluster_gpus"],
                            "gpus_per_task": expected}
    assert f"each audit asks for {expected:g}" in result.output
    assert board["rows"][0]["decision"] != "ERROR"


def test_report_folders_are_named_after_the_checkpoint_and_unique(tmp_path):
    from unlearn_audit.sweeping import folder_name

    (tmp_path / "runs" / "npo-lr1e-5").mkdir(parents=True)
    taken: set[str] = set()
    names = [folder_name(m, taken) for m in ("org/model", str(tmp_path / "runs" / "npo-lr1e-5"), "org/model",
                                            "we ird/na:me")]
    assert names == ["org__model", "npo-lr1e-5", "org__model-2", "we_ird__na_me"]


def test_a_hub_collection_gives_its_models_in_order_and_offline_is_one_line(monkeypatch):
    """The collection's items as huggingface_hub returns them (its own CollectionItem, built from the API's JSON
    shape); the Hub itself is not reachable here, so offline mode is the error path."""
    import huggingface_hub
    from huggingface_hub.hf_api import CollectionItem

    from unlearn_audit.sweeping import checkpoints_from_collection

    items = [CollectionItem(_id="3", id="org/npo-b", type="model", position=2),
             CollectionItem(_id="1", id="org/npo-a", type="model", position=0),
             CollectionItem(_id="2", id="org/tofu", type="dataset", position=1)]
    monkeypatch.setattr(huggingface_hub, "get_collection", lambda slug: type("C", (), {"items": items})())
    assert checkpoints_from_collection("org/grid-123") == ["org/npo-a", "org/npo-b"]
    monkeypatch.undo()
    with pytest.raises(InputError, match="cannot read the Hub collection"):
        checkpoints_from_collection("org/grid-123")  # HF_HUB_OFFLINE=1 in the suite
    result = runner.invoke(app, ["sweep"])
    assert result.exit_code == 2 and "--collection" in result.output


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_a_killed_sweep_resumes_where_it_stopped(world, tmp_path, signal_name):
    """SIGKILL (or SIGINT: one line, exit 3) once the first checkpoint's record is written, then the same command
    again: the first is kept, the second audited; the leaderboard has both."""
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = tmp_path / "grid.txt"
    grid.write_text("miniature/robust\nminiature/fragile\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unlearn_audit.cli", "sweep", str(grid), *OPTIONS, "--cache-dir",
               str(world.hub_cache), "--results-dir", str(tmp_path / "results"), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first = out / "miniature__robust" / ".sweep-key"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signal_name))
    _, stderr = proc.communicate(timeout=600)
    if signal_name == "SIGINT":
        assert proc.returncode == 3, stderr[-2000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in stderr, stderr[-2000:]
    else:
        assert proc.returncode == -9
    assert first.exists() and not (out / "leaderboard.json").exists()
    result = runner.invoke(app, command[3:])
    assert result.exit_code == 1, result.output
    rows = {row["model"]: row for row in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert rows["miniature/robust"]["resumed"] and not rows["miniature/fragile"]["resumed"]
    assert rows["miniature/fragile"]["decision"] == "FAIL"
