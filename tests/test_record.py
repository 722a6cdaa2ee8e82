"""The record: published schema, determinism, and no secrets in it."""

from __future__ import annotations

import json

import jsonschema
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.report.record import SCHEMA_PATH, comparable, read_report

runner = CliRunner()


def test_records_validate_against_the_published_schema(audits):
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for _, out in audits.values():
        jsonschema.validate(json.loads((out / "report.json").read_text()), schema)
    printed = runner.invoke(app, ["schema"])
    assert json.loads(printed.output) == schema


def test_record_round_trips(audits):
    path = audits["fragile"][1] / "report.json"
    assert read_report(path).to_dict() == json.loads(path.read_text())


def _stable(record: dict) -> dict:
    return comparable(record)  # without created_at, duration, execution (cache use, memory) and run times


def test_two_runs_give_identical_records(world, tmp_path):
    args = ["check", "miniature/fragile", "--quant", "rtn:4", "--max-items", "6", "--min-items", "1", "--cache-dir", str(world.hub_cache),
            "--out", str(tmp_path), "--format", "json"]
    records = []
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        records.append(_stable(json.loads((tmp_path / "report.json").read_text())))
    assert records[0] == records[1]


def test_tokens_never_reach_output_or_reports(world, tmp_path, monkeypatch):
    secret = "hf_NotARealTokenButShapedLikeOne0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    result = runner.invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--max-items", "3", "--min-items", "1",
                                 "--cache-dir", str(world.hub_cache), "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert secret not in result.output
    for f in tmp_path.iterdir():
        assert secret not in f.read_text(), f.name


def test_the_schema_names_every_metric_with_shares():
    """Every metric the analysis computes residual and recovery shares for is one the schema allows (the loss screen
    included), so a record of any benchmark validates."""
    from unlearn_audit.analysis.figures import SHARE_STATISTIC

    schema = json.loads(SCHEMA_PATH.read_text())
    assert set(schema["$defs"]["share"]["properties"]["metric"]["enum"]) == set(SHARE_STATISTIC)
    readings = schema["properties"]["weight_diff"]["properties"]["overall"]["additionalProperties"]["properties"]
    from unlearn_audit.quantize.diagnostic import READINGS

    assert readings["reading"]["enum"] == list(READINGS)
