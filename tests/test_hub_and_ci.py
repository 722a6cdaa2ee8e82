"""Hub workflows and CI outputs: the dataset-only check, specs, JUnit, step summary, model card, push."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.report.card import SECTION_END, SECTION_START, update_card
from unlearn_audit.report.record import judged_recoveries

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def test_check_with_only_a_dataset_repo(world, tmp_path, monkeypatch):
    """`HF_HUB_OFFLINE=1 unlearn-audit check org/model --forget <dataset repo>`, the Hub cache from HF_HUB_CACHE:
    the original comes from the card's base_model, PrivLeak's reference is the named default."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(world.hub_cache))
    result = runner.invoke(app, ["check", "miniature/fragile", "--forget", "miniature/news", "--out", str(tmp_path),
                                 "--quant", "rtn:4", "--max-items", "10", "--min-items", "1"])
    assert result.exit_code == 1, result.output
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["models"]["original"]["found_by"] == "from the model card's base_model"
    assert record["reference"]["source"] == "default" and "0.5" in record["reference"]["description"]
    assert any("carries its own forget-set spec" in n for n in record["notes"])


def test_spec_init_validate_show(world, tmp_path):
    spec = tmp_path / "unlearn_audit.yaml"
    assert runner.invoke(app, ["spec", "init", "--dataset", "miniature/news", "--original", "miniature/original",
                               "-o", str(spec)]).exit_code == 0
    assert runner.invoke(app, ["spec", "init", "--dataset", "x/y", "-o", str(spec)]).exit_code == 2  # no overwrite
    ok = runner.invoke(app, ["spec", "validate", str(spec)])
    assert ok.exit_code == 0 and "valid" in ok.output
    spec.write_text(spec.read_text() + "typo_key: 1\n")
    bad = runner.invoke(app, ["spec", "validate", str(spec)])
    assert bad.exit_code == 2 and "typo_key: unknown key" in bad.output
    shown = runner.invoke(app, ["spec", "show", "miniature/fragile", "--cache-dir", str(world.hub_cache), "--offline"])
    assert shown.exit_code == 0 and "from unlearn_audit.yaml in miniature/fragile" in shown.output
    assert "retrain: miniature/retrain" in shown.output
    assert runner.invoke(app, ["spec", "validate", str(ROOT / "examples" / "unlearn_audit.yaml")]).exit_code == 0


def test_junit_and_step_summary(audits, tmp_path, monkeypatch):
    from unlearn_audit.report.ci import render_junit, render_step_summary

    record = json.loads((audits["fragile"][1] / "report.json").read_text())
    suite = ET.fromstring(render_junit(record)).find("testsuite")
    exceeded = sum(s["status"] == "exceeds" for s in record["residuals"] + judged_recoveries(record))
    assert int(suite.get("failures")) == exceeded > 0
    assert int(suite.get("tests")) == len(record["residuals"]) + len(judged_recoveries(record))
    failed = {(c.get("classname"), c.get("name")) for c in suite.iter("testcase") if c.find("failure") is not None}
    assert ("recovery.rtn:4:g128", "VerbMem (forget)") in failed
    assert "❌ unlearn-audit FAIL" in render_step_summary(record)


def test_check_writes_junit_and_appends_the_step_summary(world, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = runner.invoke(app, ["check", "miniature/robust", "--quant", "rtn:4", "--max-items", "10", "--min-items", "1",
                                 "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "o"),
                                 "--junit", str(tmp_path / "junit.xml")])
    assert result.exit_code == 0, result.output
    junit = (tmp_path / "junit.xml").read_text()
    assert ET.fromstring(junit.encode()).get("failures") == "0", junit
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "✅ unlearn-audit PASS" in text


def test_card_section_replaces_itself_and_keeps_other_results(audits):
    record = json.loads((audits["fragile"][1] / "report.json").read_text())
    readme = ("---\nlicense: mit\nmodel-index:\n- name: x\n  results:\n  - task: {type: text-generation}\n"
              "    dataset: {name: other, type: other/data}\n    metrics:\n    - {type: accuracy, value: 0.5}\n---\n"
              "# My model\n\nSome text.\n")
    once = update_card(readme, record)
    twice = update_card(once, record)
    assert twice.count(SECTION_START) == 1 and twice.count(SECTION_END) == 1
    assert "Some text." in twice and "license: mit" in twice
    assert "type: accuracy" in twice  # someone else's result is kept
    assert twice.count("type: recovery_verbmem_f") == len([s for s in judged_recoveries(record)
                                                           if s["metric"] == "verbmem_f" and s["value"] is not None])


def test_push_opens_a_pull_request_with_the_network_call_replaced(audits, monkeypatch):
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    folder = audits["fragile"][1]
    calls = {}

    def fake_download(repo_id, filename, **kwargs):  # noqa: ANN001, ANN003
        raise EntryNotFoundError("no README yet")

    class Info:
        pr_url = "https://huggingface.co/org/model/discussions/1"
        commit_url = "https://huggingface.co/org/model/commit/abc"

    def fake_commit(self, repo_id, operations, **kwargs):  # noqa: ANN001, ANN003
        calls.update(repo_id=repo_id, paths=[op.path_in_repo for op in operations], **kwargs)
        return Info()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(HfApi, "create_commit", fake_commit)
    monkeypatch.setenv("HF_TOKEN", "hf_SecretTokenThatMustNotBePrinted123")
    result = runner.invoke(app, ["card", str(folder / "report.json"), "--push", "org/model"])
    assert result.exit_code == 0, result.output
    assert calls["create_pr"] is True and calls["repo_id"] == "org/model"
    assert {"README.md", "unlearn-audit/report.json", "unlearn-audit/report.html"} <= set(calls["paths"])
    assert "discussions/1" in result.output
    assert "hf_SecretToken" not in result.output
