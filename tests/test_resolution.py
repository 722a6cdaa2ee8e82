"""Two-phase resolution: configs, tokenizers, cards, specs and the needed dataset configs first; weights
only after everything that can fail without them was checked. ``snapshot_download`` is wrapped and every
call's patterns are asserted."""

from __future__ import annotations

import huggingface_hub
import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.inputs.hub import METADATA_FILES, SUBFOLDERS

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch):
    seen: list[dict] = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):  # noqa: ANN001, ANN202
        seen.append({"repo": repo_id, "type": kwargs.get("repo_type"), "allow": kwargs.get("allow_patterns"),
                     "ignore": kwargs.get("ignore_patterns")})
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return seen


def test_weights_are_fetched_last_and_only_top_level(world, calls, tmp_path):
    result = runner.invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--max-items", "2", "--min-items",
                                 "1", "--cache-dir", str(world.hub_cache), "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code in (0, 1, 4), result.output
    phases = [(c["repo"], c["allow"]) for c in calls]
    metadata = [c for c in calls if c["allow"] == METADATA_FILES]
    assert [c["repo"] for c in metadata] == ["miniature/fragile", "miniature/original", "miniature/retrain"]
    assert all(c["ignore"] == SUBFOLDERS for c in metadata)  # no checkpoint-*/ subfolders
    dataset = [c for c in calls if c["type"] == "dataset"]
    assert dataset and dataset[0]["allow"] == ["README.md", "*.yaml"] + [  # only the configs the spec names
        f"{config}/*.{ext}" for config in ("knowmem", "privleak", "verbmem") for ext in ("parquet", "jsonl", "json")]
    weights = [i for i, c in enumerate(calls) if c["allow"] == ["*.safetensors"]]
    assert [calls[i]["repo"] for i in weights] == ["miniature/fragile", "miniature/original", "miniature/retrain"]
    assert min(weights) > max(i for i, c in enumerate(calls) if c["allow"] != ["*.safetensors"]), phases
    assert all(calls[i]["ignore"] == SUBFOLDERS for i in weights)


def test_bad_split_fails_before_any_weight_is_requested(world, calls, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("spec_version: 1\ndataset: miniature/news\nverbmem: {config: verbmem, split: nope}\n")
    result = runner.invoke(app, ["check", "miniature/fragile", "--spec", str(spec), "--cache-dir",
                                 str(world.hub_cache), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "has no split 'nope'" in result.output
    assert calls, "the spy saw no call"
    assert not [c for c in calls if any("safetensors" in p for p in (c["allow"] or []))]
    assert not (tmp_path / "o" / "report.json").exists()


def test_sharded_index_names_the_weight_files(tmp_path):
    import json

    from unlearn_audit.inputs.hub import weight_patterns

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                        "c": "model-00001-of-00002.safetensors"}}))
    assert weight_patterns(tmp_path, allow_pickle=False) == ["model-00001-of-00002.safetensors",
                                                             "model-00002-of-00002.safetensors"]
    (tmp_path / "model.safetensors.index.json").unlink()
    assert weight_patterns(tmp_path, allow_pickle=True)[0] == "*.safetensors"


def test_news_preset_names_the_canonical_repos_and_musees_tokenizer(world):
    result = runner.invoke(app, ["spec", "show", "miniature/fragile", "--forget", "news", "--cache-dir",
                                 str(world.hub_cache), "--offline"])
    assert result.exit_code == 0, result.output
    assert "original: muse-bench/MUSE-News_target" in result.output
    assert "tokenizer: meta-llama/Llama-2-7b-hf" in result.output
    assert "dataset: muse-bench/MUSE-News" in result.output
    assert "reference_auc_dtype: bfloat16" in result.output


def test_preset_with_another_original_is_said_in_the_record(world, tmp_path, monkeypatch):
    """--forget news with --original of another model: the published AUC belongs to the preset's model."""
    import unlearn_audit.auditing.planning as planning
    from unlearn_audit.auditing import SilentReporter
    from unlearn_audit.auditing.planning import plan
    from unlearn_audit.config import AuditConfig
    from unlearn_audit.inputs.spec import parse_spec

    def news_as_miniature(config, unlearned, notes):  # noqa: ANN001, ANN202 (the real preset needs the Hub)
        spec = parse_spec({"name": "MUSE-News", "dataset": "miniature/news", "original": "muse-bench/MUSE-News_target",
                           "privleak": {"reference_auc": 0.4772, "reference_auc_dtype": "bfloat16"}}, "test")
        return spec, "--forget preset 'news'"

    monkeypatch.setattr(planning, "find_spec", news_as_miniature)
    config = AuditConfig(model="miniature/fragile", forget="news", original="miniature/original",
                         cache_dir=world.hub_cache, offline=True, quant=("rtn:4",))
    the_plan = plan(config, SilentReporter())
    assert any("not the MUSE-News preset's muse-bench/MUSE-News_target" in n for n in the_plan.notes)
    assert the_plan.reference.source == "published" and "bfloat16" in the_plan.reference.description


def test_a_stale_consolidated_file_beside_shards_is_not_audited(world, tmp_path):
    """A repo re-uploaded sharded keeps its old model.safetensors: transformers would load that file first.
    The audit reads the index's shards (the fragile model's weights), not the stale file (the original's)."""
    import json
    import shutil

    from safetensors.torch import load_file

    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.models import load_model

    fragile = resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True)
    original = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    folder = tmp_path / "sharded"
    load_model(fragile).model.save_pretrained(folder, max_shard_size="2MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "unlearn_audit.yaml"):
        if (fragile.path / name).exists():
            shutil.copy(fragile.path / name, folder / name)
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    shutil.copy(original.path / "model.safetensors", folder / "model.safetensors")  # the stale file
    out = tmp_path / "out"
    result = runner.invoke(app, ["check", str(folder), "--original", "miniature/original", "--forget",
                                 "miniature/news", "--quant", "rtn:8", "--max-items", "2", "--min-items", "1",
                                 "--cache-dir", str(world.hub_cache), "--out", str(out), "--format", "json"])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    assert any("model.safetensors beside a sharded index" in n for n in record["notes"]), record["notes"]
    moved = record["weight_diff"]["overall"]["rtn:8:g128"]["moved"]
    assert moved > 0.5, moved  # the shards differ from the original; the stale copy is the original itself
    assert set(load_file(str(folder / "model.safetensors"))) == set(load_file(str(original.path / "model.safetensors")))
