"""GPTQ and AWQ through GPT-QModel: calibration text, packed-code proof, and an audit through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.errors import InputError, UsageError
from unlearn_audit.inputs.calibration import FORGET, GENERIC, calibration_set, generic_texts
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_tokenizer
from unlearn_audit.quantize import parse_variant
from unlearn_audit.quantize.calibrated import unpack_codes


def _pack_bitstream(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent packer: codes along the last axis written bit by bit into little-endian int32 words."""
    *lead, n = codes.shape
    words = np.zeros((*lead, (n * bits + 31) // 32), dtype=np.uint64)
    for i in range(n):
        for b in range(bits):
            bit = (codes[..., i] >> b) & 1
            pos = i * bits + b
            words[..., pos // 32] |= bit.astype(np.uint64) << np.uint64(pos % 32)
    return words.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_unpack_codes_inverts_an_independent_packer(bits, axis):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(6, 64))  # 64 codes per stream: 3-bit codes straddle words
    packed = _pack_bitstream(codes, bits)  # packed along the last axis
    if axis == 0:
        codes, packed = codes.T, packed.T
    out = unpack_codes(torch.from_numpy(np.ascontiguousarray(packed)), bits, axis)
    assert out.shape == codes.shape
    assert np.array_equal(out.numpy(), codes)


def test_generic_calibration_is_shipped_and_unrelated_to_the_forget_set(world):
    texts = generic_texts()
    assert len(texts) >= 30 and all(len(t) > 200 for t in texts)
    forget = (world.hub_cache / "datasets--miniature--news").rglob("*.parquet")
    import pyarrow.parquet as pq
    corpus = " ".join(str(v) for f in forget for col in pq.read_table(f).columns for v in col.to_pylist())
    assert not any(t[:60] in corpus for t in texts)
    chosen = calibration_set(GENERIC)
    assert chosen.describe()["texts"] == len(texts) and len(chosen.sha256) == 64


def test_calibration_choices_and_their_errors(tmp_path):
    assert calibration_set(FORGET, ["a passage", " "]).texts == ("a passage",)
    with pytest.raises(InputError):
        calibration_set(FORGET, [])
    own = tmp_path / "calib.txt"
    own.write_text("first paragraph\nstill first\n\nsecond paragraph\n", encoding="utf-8")
    chosen = calibration_set(str(own))
    assert chosen.texts == ("first paragraph\nstill first", "second paragraph") and chosen.source == str(own)
    with pytest.raises(UsageError):
        calibration_set(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError):
        calibration_set(str(tmp_path / "empty.txt"))


def test_variant_syntax():
    assert parse_variant("gptq:4").label == "gptq:4:g128"
    assert parse_variant("gptq:4:g64:asym:act").label == "gptq:4:g64:asym:act"
    assert parse_variant("awq:4").label == "awq:4:g128" and not parse_variant("awq:4").sym
    assert parse_variant("awq:4:sym").label == "awq:4:g128:sym"
    for bad, error in (("awq:3", InputError), ("awq:4:act", InputError), ("gptq:5", InputError),
                       ("gptq:4:x", UsageError)):
        with pytest.raises(error):
            parse_variant(bad)


def test_calibration_text_changes_the_quantized_weights(world, tmp_path):
    """Calibration really runs: the same model calibrated on other text packs other codes."""
    repo = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    tokenizer = load_tokenizer(repo)
    quantizer = parse_variant("gptq:4")
    saved, results = {}, {}
    for name, calibration in (("generic", calibration_set(GENERIC)),
                              ("own", calibration_set(FORGET, ["The harbour wall will open again, the mayor said."
                                                               " Police said the storm closed the road."] * 8))):
        _, results[name] = quantizer.quantize(repo.path, tokenizer, calibration, save_to=tmp_path / name)
        from safetensors.torch import load_file
        saved[name] = load_file(str(next((tmp_path / name).glob("*.safetensors"))))
    assert results["generic"].settings["calibration"]["source"] == "generic"
    assert results["own"].settings["calibration"]["source"] == "forget"
    key = "model.layers.0.mlp.down_proj.qweight"
    assert not torch.equal(saved["generic"][key], saved["own"][key])


def test_audit_with_gptq_and_awq_through_the_cli(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4,gptq:4,awq:4", "--max-items", "6",
                                      "--min-items", "1", "--no-cache", "--scratch", str(scratch),
                                      "--cache-dir", str(world.hub_cache), "--out", str(out)])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    for role in ("unlearned", "original"):  # the original is quantized with the same settings
        runs = {r["variant"]: r for r in record["runs"] if r["role"] == role}
        for label, method in (("gptq:4:g128", "gptq"), ("awq:4:g128", "awq")):
            settings = runs[label]["settings"]
            assert settings["method"] == method and settings["calibration"]["source"] == "generic"
            assert runs[label]["proof"]["layers_quantized"] == 28
            assert runs[label]["proof"]["max_levels"] <= 16
    # compared after the fact from the two saved checkpoints, group by group (both quantized in this audit)
    assert record["weight_diff"]["not_compared"] == {}
    for label in ("gptq:4:g128", "awq:4:g128"):
        overall = record["weight_diff"]["overall"][label]
        assert 0.0 <= overall["same_code_of_moved"] <= 1.0 and overall["moved"] > 0.5
        assert overall["reading"] == "probes decide"  # the two saved checkpoints differ
        assert overall["identical"] is False and overall["kept"] is None  # no dequantization of the packed format
        assert overall["same_code_common"] is None  # no common grid for calibrated methods
    assert list(scratch.iterdir()) == []  # the audit's scratch (checkpoints, GPT-QModel's offload) removed
    assert not list((Path(os.environ["UNLEARN_AUDIT_HOME"])).rglob("scratch-*"))  # and nothing written elsewhere
    # the shipped calibration is far below GPT-QModel's 256 samples of 256 tokens: said on the terminal and in the record
    assert "fewer than the 256 samples" in result.output
    assert any("fewer than the 256 samples" in note for note in record["notes"])
    assert "4-bit GPTQ (gptq:4:g128)" in (out / "report.md").read_text()
    assert "GPT-QModel" not in result.stdout and "INFO" not in result.stdout  # the library's chatter stays out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scratch"]  # its log files out of the working directory


def test_scratch_of_a_killed_audit_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from unlearn_audit.auditing.scratch import make_scratch

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"scratch-{dead.pid}-abc"
    stale.mkdir()
    live = tmp_path / f"scratch-{os.getpid()}-xyz"
    live.mkdir()
    fresh = make_scratch(tmp_path)
    assert not stale.exists() and live.exists() and fresh.is_dir() and fresh.name.startswith(f"scratch-{os.getpid()}-")


def test_too_little_scratch_space_is_refused_before_quantizing(world, tmp_path, monkeypatch):
    import collections

    from unlearn_audit.auditing import runs, scratch

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(scratch.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    calls = []
    monkeypatch.setattr(runs, "run_all", lambda *a, **k: calls.append(a))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "gptq:4", "--max-items", "2",
                                      "--min-items", "1", "--no-cache", "--scratch", str(tmp_path / "s"),
                                      "--cache-dir", str(world.hub_cache), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert "of scratch space in" in result.output and "--scratch DIR" in result.output
    assert calls == [] and not (out / "report.json").exists()
    # the estimate: a 4-bit checkpoint per model kept (bits/8 + 10%, plus 15% of 16-bit tensors) + one 16-bit offload
    assert scratch.scratch_bytes(10**9, [parse_variant("gptq:4")], 2) == int(2 * 10**9 * (0.55 + 0.3) + 2 * 10**9)


def _calibration_dataset(cache: Path) -> str:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from unlearn_audit.miniature.hub_cache import write_cached_repo

    buffer = io.BytesIO()
    rows = ["", "First paragraph of a wiki article.", "  ", "Second paragraph, about rivers."] + \
        [f"Line {i} of filler text." for i in range(300)]
    pq.write_table(pa.table({"text": rows, "id": list(range(len(rows)))}), buffer)
    return write_cached_repo(cache, "calib/wiki", {"README.md": b"# wiki\n",
                                                   "raw-v1/train-00000-of-00001.parquet": buffer.getvalue(),
                                                   "raw-v1/test-00000-of-00001.parquet": buffer.getvalue()},
                             repo_type="dataset")


def test_calibration_from_a_hub_dataset(tmp_path):
    """org/name:config:split:column resolved through huggingface_hub (offline cache here), only the split's
    files, its first 256 non-empty texts, the commit recorded; bad parts are one line each."""
    import functools

    commit = _calibration_dataset(tmp_path)
    resolver = functools.partial(resolve, cache_dir=tmp_path, offline=True)
    chosen = calibration_set("calib/wiki:raw-v1:train:text", resolve_dataset=resolver)
    assert chosen.texts[:2] == ("First paragraph of a wiki article.", "Second paragraph, about rivers.")
    assert len(chosen.texts) == 256
    assert chosen.describe()["dataset"] == {"repo_id": "calib/wiki", "config": "raw-v1", "split": "train",
                                            "column": "text", "commit": commit, "rows": 256}
    with pytest.raises(InputError, match="has no column 'body'"):
        calibration_set("calib/wiki:raw-v1:train:body", resolve_dataset=resolver)
    with pytest.raises(InputError, match="no config 'raw-v1' split 'validation'"):
        calibration_set("calib/wiki:raw-v1:validation", resolve_dataset=resolver)
    with pytest.raises(UsageError, match="not org/name"):
        calibration_set("calib/wiki:a:b:c:d", resolve_dataset=resolver)


def test_importing_gptqmodel_leaves_the_users_hub_settings_alone(tmp_path):
    """GPT-QModel's import points HF_HOME and HF_HUB_CACHE at /tmp for the whole process; the tool puts the
    user's settings back (checked in a fresh process, where the import really happens)."""
    import os
    import subprocess
    import sys

    code = ("import os; from unlearn_audit.quantize.calibrated import _gptqmodel; _gptqmodel(); "
            "print(os.environ.get('HF_HOME'), os.environ.get('HF_HUB_CACHE'), os.environ.get('HF_MODULES_CACHE'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_CACHE"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == f"None {tmp_path / 'mine'} None"
