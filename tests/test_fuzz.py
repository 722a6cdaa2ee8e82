"""Fuzzing what the tool reads from strangers and from flags (issue: hostile files): every input ends in a result or
in one of the tool's own errors (exit 2 for bad input), never another exception (which the CLI would report as an
"unexpected" failure, exit 3, and which means a parser path nobody thought about).

Targets: ``--quant`` and ``--attack`` strings, spec YAML files (any bytes), report.json records (any JSON, and valid
records with fields dropped or retyped), safetensors files (any bytes, and valid length prefixes with any header) and
GGUF files (any bytes after the magic). Bounded here (``FUZZ_EXAMPLES`` each, default 150); the long run is
``UNLEARN_AUDIT_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -p no:cacheprovider`` (docs/development.md).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz targets need hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unlearn_audit.errors import AuditError, ExitCode  # noqa: E402

EXAMPLES = int(os.environ.get("UNLEARN_AUDIT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TOKENS = ["rtn", "bnb", "gguf", "fp8", "mxfp4", "nvfp4", "mlx", "hqq", "gptq", "awq", "paper", "deploy", "fp4", "nf4",
          "int8", "q4_k_m", "iq4_xs", "block128", "channel", "tensor", "ue8m0", "cpu", "g64", "g0", "g-1", "4", "3",
          "99", "0", "-1", "sym", "head", "dq", "act", "", " ", "relearn", "icl", "prune", "steps=5", "lr=x", "k=-1"]
"""Pieces of the variant and attack grammars, to reach past the first token."""


def _bad_input(exc: BaseException) -> bool:
    return isinstance(exc, AuditError) and exc.exit_code == ExitCode.BAD_INPUT and "\n" not in str(exc)


flag_strings = st.one_of(st.text(max_size=40),
                         st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map(":".join),
                         st.lists(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map(":".join),
                                  min_size=1, max_size=3).map(",".join))


@FUZZ
@given(flag_strings)
def test_quant_strings(text):
    from unlearn_audit.quantize import parse_variants

    try:
        parse_variants([text])
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        assert _bad_input(exc), repr(exc)


@FUZZ
@given(flag_strings)
def test_attack_strings(text):
    from unlearn_audit.attacks import parse_attacks

    try:
        parse_attacks([text])
    except Exception as exc:  # noqa: BLE001
        assert _bad_input(exc), repr(exc)


def _write(data: bytes, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / name
    path.write_bytes(data)
    return path


yaml_like = st.one_of(st.binary(max_size=200),
                      st.text(max_size=200).map(str.encode),
                      st.dictionaries(st.sampled_from(["spec_version", "dataset", "original", "retrain", "benchmark",
                                                       "verbmem", "knowmem", "privleak", "tofu", "wmdp", "x"]),
                                      st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers()),
                                                st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
                                      max_size=6).map(lambda d: json.dumps(d).encode()))


@FUZZ
@given(yaml_like)
def test_spec_files(data):
    from unlearn_audit.inputs.spec import load_spec_file

    try:
        load_spec_file(_write(data, "spec.yaml"))
    except Exception as exc:  # noqa: BLE001
        assert _bad_input(exc), repr(exc)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)


@pytest.fixture(scope="module")
def a_record(world, tmp_path_factory):
    """A valid record: a small real audit of the miniature's fragile checkpoint."""
    from typer.testing import CliRunner

    from unlearn_audit.cli import app

    out = tmp_path_factory.mktemp("fuzz-record")
    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--max-items", "4",
                                      "--min-items", "1", "--cache-dir", str(world.hub_cache), "--out", str(out)])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    from unlearn_audit.report.record import read_report

    read_report(out / "report.json")  # the unmutated record reads
    return record


@FUZZ
@given(st.one_of(json_values, st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_report_files_of_any_json(value):
    from unlearn_audit.report.record import read_report

    text = value if isinstance(value, str) else json.dumps(value)
    try:
        read_report(_write(text.encode("utf-8", "surrogatepass"), "report.json"))
    except Exception as exc:  # noqa: BLE001
        assert _bad_input(exc), repr(exc)


@FUZZ
@given(data=st.data())
def test_report_records_with_fields_dropped_or_retyped(a_record, data):
    from unlearn_audit.report.record import read_report

    record = json.loads(json.dumps(a_record))
    keys = sorted(record)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del record[key]
        else:
            record[key] = data.draw(json_values)
    if record.get("runs") and isinstance(record["runs"], list) and data.draw(st.booleans()):
        run = record["runs"][0]
        if isinstance(run, dict) and run:
            del run[data.draw(st.sampled_from(sorted(run)))]
    try:
        read_report(_write(json.dumps(record).encode(), "report.json"))
    except Exception as exc:  # noqa: BLE001
        assert _bad_input(exc), repr(exc)


safetensors_like = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(min_value=0, max_value=400), json_values, st.binary(max_size=64)).map(
        lambda t: struct.pack("<Q", t[0]) + json.dumps(t[1]).encode() + t[2]),
    st.tuples(st.dictionaries(st.text(max_size=6), st.fixed_dictionaries(
        {"dtype": st.sampled_from(["F32", "BF16", "I8", "X"]), "shape": st.lists(st.integers(-2, 5), max_size=3),
         "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3)}), max_size=3),
              st.binary(max_size=64)).map(
        lambda t: struct.pack("<Q", len(json.dumps(t[0]))) + json.dumps(t[0]).encode() + t[1]))


@FUZZ
@given(safetensors_like)
def test_safetensors_files(data):
    from unlearn_audit.inputs.checkpoint import tensor_shapes

    path = _write(data, "model.safetensors")
    try:
        tensor_shapes(path.parent)
    except Exception as exc:  # noqa: BLE001
        assert _bad_input(exc), repr(exc)


@FUZZ
@given(st.binary(max_size=300))
def test_gguf_files(data):
    from unlearn_audit.quantize.published import _file_type as gguf_file_type

    path = _write(b"GGUF" + data, "model.gguf")
    try:
        gguf_file_type(path)
    except Exception as exc:  # noqa: BLE001
        assert _bad_input(exc), repr(exc)
