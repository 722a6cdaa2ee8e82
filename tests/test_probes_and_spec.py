"""Probe prompt formats (exact strings), stop strings, the spec, and hub-cache resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearn_audit.errors import InputError, ResolutionError
from unlearn_audit.inputs.spec import PRESETS, load_spec_file, parse_spec, preset_spec
from unlearn_audit.probes.muse import cut_at_stops, knowmem_prompt


def test_knowmem_prompt_is_musees_exact_string():
    prompt = knowmem_prompt(["Q1?", "Q2?"], ["A1", "A2"], "Q3?")
    assert prompt == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "


def test_stop_strings_cut_at_the_earliest():
    assert cut_at_stops("Paris\n\nQuestion: x") == "Paris"
    assert cut_at_stops("Paris\nQuestion: next") == "Paris"
    assert cut_at_stops("Paris Question: next") == "Paris "
    assert cut_at_stops("no stop here") == "no stop here"


def test_spec_rejects_unknown_keys_and_versions(tmp_path: Path):
    with pytest.raises(InputError, match="verbmem.splt: unknown key"):
        parse_spec({"dataset": "a/b", "verbmem": {"splt": "x"}}, "test")
    with pytest.raises(InputError, match="spec_version"):
        parse_spec({"dataset": "a/b", "spec_version": 9}, "test")
    with pytest.raises(InputError, match="dataset"):
        parse_spec({"original": "a/b"}, "test")
    bad = tmp_path / "s.yaml"
    bad.write_text("dataset: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_spec_file(bad)
    good = tmp_path / "g.yaml"
    good.write_text("spec_version: 1\ndataset: org/data\nretrain: org/retrain\n")
    spec = load_spec_file(good)
    assert spec.retrain == "org/retrain" and spec.knowmem_forget.icl_split == "forget_qa_icl"


def test_presets_point_at_muse_with_published_reference_aucs():
    assert preset_spec("news").dataset == "muse-bench/MUSE-News"
    assert preset_spec("news").privleak.reference_auc == 0.4772
    assert preset_spec("books").privleak.reference_auc == 0.5393
    assert set(PRESETS) == {"news", "books"}


def test_hub_cache_layout_resolves_through_snapshot_download(tmp_cache: Path):
    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.miniature.hub_cache import write_cached_repo

    commit = write_cached_repo(tmp_cache, "org/thing", {"config.json": b"{}", "sub/w.safetensors": b"x" * 10})
    repo = resolve("org/thing", cache_dir=tmp_cache, offline=True)
    assert repo.source == "hub" and repo.commit == commit
    assert (repo.path / "sub" / "w.safetensors").read_bytes() == b"x" * 10
    assert (repo.path / "config.json").is_symlink()  # as huggingface_hub lays it out
    assert resolve("org/thing", revision=commit, cache_dir=tmp_cache, offline=True).commit == commit
    with pytest.raises(ResolutionError, match="not in the local Hub cache"):
        resolve("org/other", cache_dir=tmp_cache, offline=True)
    with pytest.raises(ResolutionError, match="not in the local Hub cache"):
        resolve("org/thing", revision="v9", cache_dir=tmp_cache, offline=True)
    with pytest.raises(InputError, match="neither an existing folder"):
        resolve("./no/such/folder", cache_dir=tmp_cache)


def test_identical_content_gets_identical_commit(tmp_path: Path):
    from unlearn_audit.miniature.hub_cache import write_cached_repo

    files = {"a.json": b"1", "b.parquet": b"22"}
    assert write_cached_repo(tmp_path / "x", "o/n", files) == write_cached_repo(tmp_path / "y", "o/n", files)
    assert write_cached_repo(tmp_path / "z", "o/n", {**files, "a.json": b"2"}) != write_cached_repo(tmp_path / "y", "o/n", files)


def test_spec_column_mappings_and_json_layouts_read_the_same_data(world, tmp_path):
    """The same forget set in other layouts the Hub uses — a split as JSON Lines with its own column names, a
    split as a JSON list, JSON Lines named .json, files at the repo root — read through the spec's config and ``columns`` gives exactly
    the data MUSE's parquet layout gives."""
    import json as _json
    import shutil as _shutil

    import pyarrow.parquet as pq

    from unlearn_audit.inputs.data import dataset_patterns, load_forget_data
    from unlearn_audit.inputs.hub import resolve as _resolve
    from unlearn_audit.inputs.spec import parse_spec, spec_for_dataset

    source = _resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    folder = tmp_path / "data"
    _shutil.copytree(source, folder)
    verbmem = pq.read_table(next((folder / "verbmem").glob("forget-*.parquet"))).to_pylist()
    for f in (folder / "verbmem").glob("forget-*.parquet"):
        f.unlink()
    (folder / "verbmem" / "forget.jsonl").write_text(
        "\n".join(_json.dumps({"context": r["prompt"], "continuation": r["gt"]}) for r in verbmem))
    privleak = folder / "privleak"
    for split in ("forget", "holdout"):
        rows = [r for f in sorted(privleak.glob(f"{split}-*.parquet")) for r in pq.read_table(f).to_pylist()]
        for f in privleak.glob(f"{split}-*.parquet"):
            f.unlink()
        records = [{"passage": r["text"]} for r in rows]
        (folder / f"mia_{split}.json").write_text(  # a JSON list; and JSON Lines under a .json name, as TOFU's files
            _json.dumps(records) if split == "forget" else "\n".join(_json.dumps(r) for r in records))
    spec = parse_spec({"dataset": str(folder), "verbmem": {"columns": {"prompt": "context", "gt": "continuation"}},
                       "privleak": {"config": ".", "forget_split": "mia_forget", "holdout_split": "mia_holdout",
                                    "columns": {"text": "passage"}},
                       "holdout": {"config": ".", "split": "mia_holdout", "columns": {"text": "passage"}}}, "test")
    mine = load_forget_data(folder, spec, max_items=5)
    muse = load_forget_data(source, spec_for_dataset(str(source)), max_items=5)
    assert mine == muse
    patterns = dataset_patterns(spec)
    assert "verbmem/*.jsonl" in patterns and "mia_forget.json" in patterns and "mia_holdout.json" in patterns
