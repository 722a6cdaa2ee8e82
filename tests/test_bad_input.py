"""Bad input, faults and hostile checkpoints: each gives one line naming the problem and the fix, the
documented exit code (2 input, 3 runtime), no traceback, and no report left behind."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.inputs.hub import resolve

runner = CliRunner()


def _copy_repo(world, name: str, dest: Path, kind: str = "model") -> Path:
    src = resolve(name, kind=kind, cache_dir=world.hub_cache, offline=True).path
    shutil.copytree(src, dest, symlinks=False)
    return dest


def _invoke(world, args: list[str], out: Path):
    return runner.invoke(app, [*args, "--cache-dir", str(world.hub_cache), "--out", str(out)])


def _assert_one_line_error(result, code: int, fragment: str, out: Path) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines, "no message"
    last = lines[-1]
    assert last.startswith("error:") and "Fix:" in last, result.output
    assert [line for line in lines if line.startswith("error:")] == [last]
    assert fragment in last, last
    assert "Traceback" not in result.output
    assert not (out / "report.json").exists()
    assert not list(out.glob(".report*")) if out.exists() else True


# ---- cases that fail before any model is loaded ---------------------------------------------------

def _dataset_case(world, tmp_path: Path, edit) -> list[str]:  # noqa: ANN001
    data = _copy_repo(world, "miniature/news", tmp_path / "data", kind="dataset")
    edit(data)
    return ["check", "miniature/fragile", "--forget", str(data)]


def _drop(path: str):  # noqa: ANN202
    return lambda data: shutil.rmtree(data / path) if (data / path).is_dir() else (data / path).unlink()


def _rewrite(path: str, columns: dict):  # noqa: ANN202
    return lambda data: pq.write_table(pa.table(columns), data / path)


VERBMEM = "verbmem/forget-00000-of-00001.parquet"

DATASET_CASES = {
    "missing config": (_drop("knowmem"), "has no config 'knowmem'"),
    "missing split": (_drop("privleak/holdout-00000-of-00001.parquet"), "has no split 'holdout' (it has: forget, retain)"),
    "empty split": (_rewrite(VERBMEM, {"prompt": pa.array([], pa.string()), "gt": pa.array([], pa.string())}),
                    "verbmem/forget is empty"),
    "missing column": (_rewrite(VERBMEM, {"prompt": ["a"], "text": ["b"]}),
                       "verbmem needs column 'gt' in verbmem/forget, which has: prompt, text"),
}


@pytest.mark.parametrize("case", sorted(DATASET_CASES))
def test_bad_dataset(world, tmp_path, case):
    edit, fragment = DATASET_CASES[case]
    args = _dataset_case(world, tmp_path, edit)
    _assert_one_line_error(_invoke(world, args, tmp_path / "o"), 2, fragment, tmp_path / "o")


def _spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


SIMPLE_CASES = {
    "unknown repo": (["check", "miniature/absent", "--forget", "news"], "not in the local Hub cache"),
    "unknown revision": (["check", "miniature/fragile", "--revision", "v9"], "at revision 'v9' is not in the local Hub cache"),
    "no spec and no --forget": (["check", "miniature/original"], "no forget-set spec"),
    "unsupported bit width": (["check", "miniature/fragile", "--quant", "rtn:1"], "bit width 1 is not supported"),
    "unknown quantizer": (["check", "miniature/fragile", "--quant", "int3"], "unknown quantization method"),
    "both --forget and --spec": (["check", "miniature/fragile", "--forget", "news", "--spec", "s.yaml"], "both --forget and --spec"),
    "threshold out of range": (["check", "miniature/fragile", "--max-residual", "-1"], "outside [0, 1]"),
    "unknown format": (["check", "miniature/fragile", "--format", "pdf"], "unknown report format pdf"),
    "not a Hub id or folder": (["check", "a/b/c"], "neither an existing folder nor a Hub id"),
    "unknown flavour": (["check", "miniature/fragile", "--flavour", "tofu"], "unknown metric flavour"),
}


@pytest.mark.parametrize("case", sorted(SIMPLE_CASES))
def test_bad_usage(world, tmp_path, case):
    args, fragment = SIMPLE_CASES[case]
    _assert_one_line_error(_invoke(world, args, tmp_path / "o"), 2, fragment, tmp_path / "o")


def test_malformed_spec(world, tmp_path):
    args = ["check", "miniature/fragile", "--spec", _spec(tmp_path, "dataset: [unclosed\n")]
    _assert_one_line_error(_invoke(world, args, tmp_path / "o"), 2, "is not valid YAML", tmp_path / "o")


def test_a_spec_column_the_data_lacks_is_one_line_before_any_model(world, tmp_path):
    """The spec maps a probe's column to one the data does not have: one line naming the spec section (the
    probe), the column and the fix, exit 2, before any model is loaded."""
    data = _copy_repo(world, "miniature/news", tmp_path / "data", kind="dataset")
    spec = _spec(tmp_path, f"dataset: {data}\noriginal: miniature/original\n"
                           "knowmem_forget: {split: forget_qa, icl_split: forget_qa_icl, columns: {answer: reply}}\n")
    result = _invoke(world, ["check", "miniature/fragile", "--spec", spec], tmp_path / "o")
    _assert_one_line_error(result, 2, "knowmem_forget needs column 'answer' (mapped to 'reply') in knowmem/forget_qa",
                           tmp_path / "o")
    assert "knowmem_forget: {columns: {answer: <one of those>}}" in result.output
    assert "loading" not in result.output


def test_a_spec_column_role_no_probe_reads_is_refused(world, tmp_path):
    spec = _spec(tmp_path, "dataset: x\nverbmem: {columns: {answer: reply}}\n")
    result = _invoke(world, ["check", "miniature/fragile", "--spec", spec], tmp_path / "o")
    _assert_one_line_error(result, 2, "unknown column role 'answer' (this probe reads prompt, gt)", tmp_path / "o")


def test_spec_with_unknown_key(world, tmp_path):
    args = ["check", "miniature/fragile", "--spec", _spec(tmp_path, "dataset: miniature/news\nforget_split: x\n")]
    _assert_one_line_error(_invoke(world, args, tmp_path / "o"), 2, "forget_split: unknown key", tmp_path / "o")


def test_record_of_unknown_schema_version(tmp_path):
    record = tmp_path / "report.json"
    record.write_text(json.dumps({"schema_version": 99}))
    result = runner.invoke(app, ["report", str(record), "--out", str(tmp_path / "o")])
    _assert_one_line_error(result, 2, "schema version 99", tmp_path / "o")


# ---- the Hub, as huggingface_hub reports it (the network call replaced) ---------------------------

def _hub_error(kind: str):  # noqa: ANN202
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    response = httpx2.Response(401, request=httpx2.Request("GET", "https://hub.invalid/api/models/x/y"))
    return {
        "missing repo": RepositoryNotFoundError("404", response=response),
        "missing revision": RevisionNotFoundError("404", response=response),
        "gated": GatedRepoError("401", response=response),
        "no network": LocalEntryNotFoundError("Connection refused and not cached"),
    }[kind]


@pytest.mark.parametrize("kind,fragment", [
    ("missing repo", "does not exist on the Hub or is private"),
    ("missing revision", "the revision does not exist"),
    ("gated", "is gated and no accepted token was found"),
    ("no network", "the Hub could not be reached"),
])
def test_hub_failures(monkeypatch, tmp_path, kind, fragment):
    import huggingface_hub
    from huggingface_hub import constants

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003
        raise _hub_error(kind)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = runner.invoke(app, ["check", "org/model", "--forget", "news", "--out", str(tmp_path / "o")])
    _assert_one_line_error(result, 2, fragment, tmp_path / "o")


# ---- hostile or broken checkpoints --------------------------------------------------------------

class _Planted:
    """A pickle that creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_and_never_unpickled(world, tmp_path):
    import pickle

    folder = _copy_repo(world, "miniature/fragile", tmp_path / "model")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(marker)))
    result = _invoke(world, ["check", str(folder), "--original", "miniature/original"], tmp_path / "o")
    _assert_one_line_error(result, 2, "has only pickled weights", tmp_path / "o")
    assert not marker.exists()


def test_pickle_beside_safetensors_is_never_loaded(world, tmp_path):
    import pickle

    folder = _copy_repo(world, "miniature/fragile", tmp_path / "model")
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(marker)))
    result = _invoke(world, ["check", str(folder), "--original", "miniature/original", "--quant", "rtn:8",
                             "--max-items", "2", "--min-items", "1", "--format", "json"], tmp_path / "o")
    assert result.exit_code in (0, 1, 4), result.output
    assert not marker.exists()


def test_remote_code_is_refused(world, tmp_path):
    folder = _copy_repo(world, "miniature/fragile", tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    result = _invoke(world, ["check", str(folder), "--original", "miniature/original"], tmp_path / "o")
    _assert_one_line_error(result, 2, "needs custom code from its repo", tmp_path / "o")


def test_not_a_causal_lm(world, tmp_path):
    folder = _copy_repo(world, "miniature/fragile", tmp_path / "model")
    (folder / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
    result = _invoke(world, ["check", str(folder), "--original", "miniature/original"], tmp_path / "o")
    _assert_one_line_error(result, 2, "is not a causal language model", tmp_path / "o")


def test_different_tokenizers(world, tmp_path):
    from unlearn_audit.miniature.train import build_tokenizer

    folder = _copy_repo(world, "miniature/fragile", tmp_path / "model")
    for f in folder.glob("tokenizer*"):
        f.unlink()
    build_tokenizer(["a completely different corpus of words"] * 20, 300).save_pretrained(folder)
    result = _invoke(world, ["check", str(folder), "--original", "miniature/original"], tmp_path / "o")
    _assert_one_line_error(result, 2, "use different tokenizers", tmp_path / "o")


def test_group_size_that_does_not_divide_gives_a_shorter_last_group(world, tmp_path):
    # The miniature's layers are 128 and 512 wide: groups of 96 leave a last group of 32 (GPTQ's rule).
    result = _invoke(world, ["check", "miniature/fragile", "--quant", "rtn:4:g96", "--max-items", "2", "--min-items",
                             "1", "--format", "json"], tmp_path / "o")
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((tmp_path / "o" / "report.json").read_text())
    proof = next(r["proof"] for r in record["runs"] if r["variant"] == "rtn:4:g96" and r["role"] == "unlearned")
    assert proof["short_groups"] > 0 and proof["max_levels"] <= 16


# ---- runtime faults -----------------------------------------------------------------------------

def test_output_folder_not_writable(world, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "reports"
    result = _invoke(world, ["check", "miniature/fragile"], out)
    assert result.exit_code == 3, result.output
    assert "cannot write reports into" in result.output and "Fix:" in result.output


def test_disk_full_while_writing_leaves_nothing_behind(world, tmp_path, monkeypatch):
    import unlearn_audit.report.record as record

    def full(fd):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record.os, "fsync", full)
    out = tmp_path / "o"
    result = _invoke(world, ["check", "miniature/fragile", "--quant", "rtn:8", "--max-items", "2", "--min-items", "1"], out)
    _assert_one_line_error(result, 3, "No space left on device", out)
    assert list(out.iterdir()) == []  # no report, no temporary file


@pytest.mark.parametrize("fault,fragment", [("oom", "out of memory"), ("interrupt", "interrupted")])
def test_runtime_faults_during_probing(world, tmp_path, monkeypatch, fault, fragment):
    import torch

    import unlearn_audit.auditing.runs as runs

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        if fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "run_probes", boom)
    out = tmp_path / "o"
    result = _invoke(world, ["check", "miniature/fragile", "--quant", "rtn:8", "--no-cache"], out)
    _assert_one_line_error(result, 3, fragment, out)


def test_quantizer_library_missing_names_the_install_command(world, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    out = tmp_path / "o"
    result = _invoke(world, ["check", "miniature/fragile", "--quant", "bnb:fp4", "--max-items", "2", "--min-items", "1"], out)
    _assert_one_line_error(result, 2, "need the bitsandbytes package", out)
    assert "pip install 'bitsandbytes>=0.49'" in result.output


def test_allow_pickle_loads_a_bin_only_checkpoint(world, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = _copy_repo(world, "miniature/fragile", tmp_path / "model")
    state = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    torch.save(state, folder / "pytorch_model.bin")  # transformers 5 always writes safetensors itself
    (folder / "model.safetensors").unlink()
    assert not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin"))
    refused = _invoke(world, ["check", str(folder), "--quant", "rtn:4", "--max-items", "2", "--min-items", "1"], tmp_path / "a")
    assert refused.exit_code == 2
    allowed = _invoke(world, ["check", str(folder), "--quant", "rtn:4", "--max-items", "2", "--min-items", "1", "--allow-pickle"],
                      tmp_path / "b")
    assert allowed.exit_code in (0, 1, 4), allowed.output
    assert (tmp_path / "b" / "report.json").is_file()


def test_saving_a_model_prints_no_shard_bars(stories, tmp_path, capfd):
    """A redirected run once carried transformers' "Writing model shards" bars on stderr (the miniature's build saves
    models before any is loaded through the tool): quiet_transformers, which every build calls, turns them off."""
    from unlearn_audit.support.noise import quiet_transformers

    from transformers.utils import logging as hf_logging

    model, _ = stories
    hf_logging.enable_progress_bar()  # as a fresh process starts
    capfd.readouterr()
    model.save_pretrained(tmp_path / "loud")
    assert "Writing model shards" in capfd.readouterr().err  # what leaked
    quiet_transformers()
    model.save_pretrained(tmp_path / "quiet")
    assert "Writing model shards" not in capfd.readouterr().err
