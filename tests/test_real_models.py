"""Real checkpoints nobody here built: karpathy's stories260K (a real sentencepiece tokenizer, tied
embeddings, layer widths 64 and 172) audited through the real loading code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.miniature.nudge import nudge_checkpoint

STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"
runner = CliRunner()


def sentencepiece_only(dest: Path) -> Path:
    """stories260K as most Llama-1/2-era fine-tunes ship: ``tokenizer.model`` and no ``tokenizer.json``."""
    shutil.copytree(STORIES, dest, ignore=shutil.ignore_patterns("tokenizer.json", "*.py", "*.md", "LICENSE"))
    return dest


@pytest.fixture(scope="module")
def stories_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("stories")
    original = sentencepiece_only(root / "original")
    nudged = nudge_checkpoint(original, root / "nudged", rel=1e-4, seed=0)
    return original, nudged


def test_sentencepiece_only_tokenizer_loads_and_matches_sentencepiece(stories_pair):
    import sentencepiece as spm

    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.models import load_tokenizer

    original, _ = stories_pair
    assert not (original / "tokenizer.json").exists()
    tok = load_tokenizer(resolve(str(original)))
    sp = spm.SentencePieceProcessor(model_file=str(original / "tokenizer.model"))
    for text in ("Once upon a time, there was a little girl named Lily.", "The 3 dogs ran 12 miles!\nAnswer: "):
        assert tok(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]


def test_audit_of_real_sentencepiece_checkpoints_with_default_variants(world, stories_pair, tmp_path):
    """Done-when of the real-checkpoint issue: the default --quant runs on real layer widths (172, 64) and
    a real sentencepiece tokenizer; the original never saw the miniature's stories: INCONCLUSIVE."""
    original, nudged = stories_pair
    out = tmp_path / "out"
    result = runner.invoke(app, ["check", str(nudged), "--original", str(original), "--forget", "miniature/news",
                                 "--cache-dir", str(world.hub_cache), "--out", str(out), "--format", "json,md,html"])
    assert result.exit_code == 4, result.output
    record = json.loads((out / "report.json").read_text())
    assert record["verdict"]["decision"] == "INCONCLUSIVE"
    assert "does not measurably know the forget set" in record["verdict"]["headline"]
    for run in record["runs"]:
        if run["variant"] != "full":
            assert run["proof"]["short_groups"] > 0  # 172-wide and 64-wide layers, groups of 128
            assert run["proof"]["max_levels"] <= run["proof"]["allowed_levels"]
    tok = record["models"]["unlearned"]["tokenizer"]
    assert tok["how"] == "the model's own" and tok["built_from"] == "tokenizer.model" and tok["adds_bos"]


def _without_tokenizers(stories_pair, tmp_path: Path) -> tuple[Path, Path]:  # noqa: ANN001
    """Copies of the pair with no tokenizer file at all (weights-only uploads, as MUSE's targets may be)."""
    copies = (tmp_path / "u", tmp_path / "o")
    for src, dst in zip(reversed(stories_pair), copies):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tokenizer*"))
    return copies


def test_no_tokenizer_anywhere_is_one_line_with_the_fix(world, stories_pair, tmp_path):
    bare_u, bare_o = _without_tokenizers(stories_pair, tmp_path)
    result = runner.invoke(app, ["check", str(bare_u), "--original", str(bare_o), "--forget", "miniature/news",
                                 "--cache-dir", str(world.hub_cache), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "holds no tokenizer files" in result.output and "--tokenizer" in result.output
    assert not (tmp_path / "r" / "report.json").exists()


def test_tokenizer_flag_and_spec_key_supply_a_missing_tokenizer(world, stories_pair, tmp_path):
    original = stories_pair[0]
    bare_u, bare_o = _without_tokenizers(stories_pair, tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"spec_version: 1\ndataset: miniature/news\ntokenizer: {original}\n")
    for how, args in (("--tokenizer", ["--forget", "miniature/news", "--tokenizer", str(original)]),
                      ("the spec's tokenizer", ["--spec", str(spec)])):
        out = tmp_path / how.replace(" ", "-")
        result = runner.invoke(app, ["check", str(bare_u), "--original", str(bare_o), *args, "--quant", "rtn:4",
                                     "--max-items", "4", "--cache-dir", str(world.hub_cache), "--out", str(out),
                                     "--format", "json"])
        assert result.exit_code == 4, result.output
        record = json.loads((out / "report.json").read_text())
        assert record["models"]["original"]["tokenizer"]["how"] == how
        assert record["models"]["original"]["tokenizer"]["source"] == str(original)


def test_every_bitsandbytes_format_runs_on_real_widths(world, stories_pair, tmp_path):
    """bitsandbytes' packed CPU kernel dies on 172-wide layers; those layers take its generic path."""
    original, nudged = stories_pair
    result = runner.invoke(app, ["check", str(nudged), "--original", str(original), "--forget", "miniature/news",
                                 "--quant", "bnb:nf4,bnb:fp4,bnb:int8", "--max-items", "2", "--min-items", "1",
                                 "--cache-dir", str(world.hub_cache), "--out", str(tmp_path), "--format", "json"])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((tmp_path / "report.json").read_text())
    assert {r["variant"] for r in record["runs"]} == {"full", "bnb:nf4", "bnb:fp4", "bnb:int8"}


def test_gptq_on_widths_its_kernels_refuse_is_one_line_before_any_probe(world, stories_pair, tmp_path):
    pytest.importorskip("gptqmodel")
    original, nudged = stories_pair
    result = runner.invoke(app, ["check", str(nudged), "--original", str(original), "--forget", "miniature/news",
                                 "--quant", "rtn:4,gptq:4", "--cache-dir", str(world.hub_cache), "--out", str(tmp_path)])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "variant gptq:4:g128 cannot quantize layer model.layers.0" in lines[0]
    assert "full precision:" not in result.output  # refused before the first probe
    assert not (tmp_path / "report.json").exists()


def test_tied_embeddings_are_restored_in_place(stories_pair):
    """stories260K ties lm_head to the embedding (no lm_head.weight stored): RTN variants still quantize the
    loaded copy in place (no deepcopy: one model in memory) and restore it exactly, even with :head."""
    import torch

    from unlearn_audit.inputs.hub import resolve
    from unlearn_audit.inputs.models import load_model, restorable, restore_weights
    from unlearn_audit.quantize import parse_variant

    original = resolve(str(stories_pair[0]))
    loaded = load_model(original)
    model = loaded.model
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert restorable(model, original.path)
    parse_variant("rtn:4:head").apply(model)
    assert not torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])  # moved with lm_head
    restore_weights(model, original.path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_gguf_variants_on_real_widths_and_tied_embeddings(world, stories_pair, tmp_path):
    """llama.cpp on a real checkpoint: tied embeddings (the head is the embedding, quantized once) and 172-wide
    rows that no GGUF block type takes (llama.cpp keeps them in F16): the proofs count what the file holds,
    the fixed-grid diagnostic leaves those matrices out and says so, and the k-quant mix is compared from
    the two files; the nudge (1e-4 relative) is far below every grid's step: almost every level stays, yet the quantized
    models differ, so the probes decide, and what is left of the nudge is the nudge itself, dithered (kept about 1)."""
    original, nudged = stories_pair
    out = tmp_path / "out"
    result = runner.invoke(app, ["check", str(nudged), "--original", str(original), "--forget", "miniature/news",
                                 "--quant", "gguf:q4_0,gguf:q4_k_m", "--max-items", "4", "--no-cache",
                                 "--cache-dir", str(world.hub_cache), "--out", str(out)])
    assert result.exit_code == 4, result.output
    record = json.loads((out / "report.json").read_text())
    runs = {(r["role"], r["variant"]): r for r in record["runs"]}
    for label in ("gguf:q4_0", "gguf:q4_k_m"):
        run = runs[("unlearned", label)]
        assert run["settings"]["tensor_types"]["F16"] == 5  # the five 172-wide down projections
        assert run["settings"]["include_lm_head"] is True  # tied: the embedding, quantized
        assert run["proof"]["max_levels"] <= run["proof"]["allowed_levels"]
        assert sum("down_proj" in name for name in run["proof"]["layers_skipped"]) == 5
    diff = record["weight_diff"]
    assert len(diff["left_out"]["gguf:q4_0"]) == 5 and "172" in next(iter(diff["left_out"]["gguf:q4_0"].values()))
    assert diff["overall"]["gguf:q4_k_m"]["by_type"]["Q5_0"]["tensors"] > 0  # 64-wide rows: k-quants fall back
    for label in ("gguf:q4_0", "gguf:q4_k_m"):
        assert diff["overall"][label]["same_code_of_moved"] > 0.99
        assert diff["overall"][label]["reading"] == "probes decide"
        assert 0.5 < diff["overall"][label]["kept"] < 1.5
    assert "5 matrices left out" in (out / "report.md").read_text()
