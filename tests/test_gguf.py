"""GGUF variants: the conversion checked against transformers' own GGUF loader, llama.cpp's quantization
checked against the gguf package's reference code, the proof read from the file, and audits through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.quantize import parse_variant
from unlearn_audit.quantize.gguf import from_file_rows, quantize_file, to_file_rows, write_gguf

STORIES = Path(__file__).resolve().parent / "fixtures" / "stories260K"


@pytest.fixture(scope="module")
def original(world):
    return load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))


def test_permutation_round_trips():
    w = np.arange(8 * 3 * 2, dtype=np.float32).reshape(16, 3)
    assert not np.array_equal(to_file_rows(w, 2), w)
    np.testing.assert_array_equal(from_file_rows(to_file_rows(w, 2), 2), w)


@pytest.mark.parametrize("which", ["miniature", "stories260K"])
def test_the_converted_file_loads_in_transformers_with_the_same_logits(original, which, tmp_path):
    """transformers' GGUF loader (an independent reader: it undoes llama.cpp's q/k permutation itself) gives
    the model's own logits from the F32 file: names, permutation and metadata are right. stories260K ties its
    embeddings and has 8 query / 4 key-value heads."""
    from transformers import AutoModelForCausalLM

    loaded = original if which == "miniature" else load_model(resolve(str(STORIES)))
    write_gguf(loaded.model, tmp_path / "model.gguf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", dtype=torch.float32)
    ids = loaded.tokenizer(["Once upon a time the mayor said"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**ids).logits, loaded.model(**ids).logits, rtol=0, atol=1e-4)


def test_llama_cpp_q8_0_and_q4_0_equal_the_reference_quantization(original, tmp_path):
    """Every Q8_0 / Q4_0 tensor llama.cpp wrote equals, bit for bit, the gguf package's port of ggml's
    reference quantizer applied to the same (permuted) weights."""
    import gguf
    from gguf.quants import quantize

    mapping = write_gguf(original.model, tmp_path / "f32.gguf")
    reference = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(tmp_path / "f32.gguf")).tensors}
    checked = 0
    for kind, ftype in (("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"), ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0")):
        quantize_file(tmp_path / "f32.gguf", tmp_path / f"{kind}.gguf", ftype)
        for tensor in gguf.GGUFReader(str(tmp_path / f"{kind}.gguf")).tensors:
            if tensor.tensor_type.name != kind:
                continue
            mine = quantize(reference[tensor.name].astype(np.float32), gguf.GGMLQuantizationType[kind])
            np.testing.assert_array_equal(np.asarray(tensor.data).reshape(-1), mine.reshape(-1), err_msg=tensor.name)
            checked += 1
    assert checked >= 28 and len(mapping) > 28


def test_q4_k_m_proof_reads_the_files_own_types(original):
    import copy

    model = copy.deepcopy(original.model)
    result = parse_variant("gguf:q4_k_m").apply(model)
    types = result.settings["types_by_tensor"]
    # llama.cpp's own choices: k-quants need rows of 256 (down_proj, 512 inputs); the 128-wide rows fall back
    assert types["model.layers.0.mlp.down_proj.weight"] in ("Q4_K", "Q6_K")
    assert types["model.layers.0.self_attn.q_proj.weight"] not in ("Q4_K", "F32")
    assert result.settings["tensor_types"]["F32"] == 9  # the norms stay float32
    assert result.proof.max_levels <= result.proof.allowed_levels
    assert result.settings["max_levels_per_type"]


def test_audits_with_gguf_variants_run_prove_and_stay_quiet(world, tmp_path):
    """The fragile and robust miniature audits with GGUF variants beside RTN-4. The fragile model was built so
    that its update stays on RTN-4's grid (g128): it brings it back (bnb FP4's grid too: test_weights, test_methods).
    GGUF's grids are other grids (Q4_0: symmetric scale per block of 32; Q8_0: 8 bits), so they bring back
    far less; the robust model holds under all of them. llama.cpp's log stays off the terminal."""
    records = {}
    for name in ("fragile", "robust"):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["check", f"miniature/{name}", "--quant",
                                          "rtn:4,gguf:q8_0,gguf:q4_0,gguf:q4_k_m",
                                          "--cache-dir", str(world.hub_cache), "--out", str(out), "--no-cache",
                                          "--scratch", str(tmp_path / "scratch")])
        assert result.exit_code in (0, 1, 4), result.output
        assert "llama_model_quantize" not in result.output and "converting to" not in result.output
        records[name] = json.loads((out / "report.json").read_text())
    assert records["fragile"]["verdict"]["decision"] == "FAIL"
    assert records["robust"]["verdict"]["decision"] == "PASS"
    recovery = {(r["metric"], r["variant"]): r["value"] for r in records["fragile"]["recoveries"]}
    assert recovery[("verbmem_f", "rtn:4:g128")] > 0.5
    for label in ("gguf:q8_0", "gguf:q4_0", "gguf:q4_k_m"):
        assert recovery[("verbmem_f", label)] < recovery[("verbmem_f", "rtn:4:g128")] - 0.3, label
    for record in records.values():  # the k-quant mix compared from the two files the audit kept
        kquant = record["weight_diff"]["overall"]["gguf:q4_k_m"]
        assert "gguf:q4_k_m" not in record["weight_diff"]["not_compared"]
        assert {"Q4_K", "Q6_K"} <= set(kquant["by_type"]) and kquant["same_code_common_of_moved"] is None
        assert 0 <= kquant["same_code_of_moved"] <= 1 and kquant["update_steps"] > 0
    assert (tmp_path / "scratch").is_dir() and not list((tmp_path / "scratch").iterdir())  # gone with the audit
    for record in records.values():
        runs = {(r["role"], r["variant"]): r for r in record["runs"]}
        for label in ("gguf:q8_0", "gguf:q4_0", "gguf:q4_k_m"):
            assert runs[("unlearned", label)]["proof"]["layers_quantized"] == 29  # 28 linear + output
            assert runs[("original", label)]["settings"]["tensor_types"]["F32"] == 9


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_the_diagnostics_block_grid_is_ggmls_bit_for_bit(original, kind):
    """The grid the weight diagnostic fits gives the values the gguf package's port of ggml's reference quantizer
    gives (which equals llama.cpp's output, above), for every block tensor of the miniature."""
    import gguf
    from gguf.quants import dequantize, quantize

    from unlearn_audit.quantize.gguf import block_grid

    qtype = gguf.GGMLQuantizationType[kind]
    for name, param in original.model.named_parameters():
        if param.ndim != 2:
            continue
        w = param.detach().float()
        grid = block_grid(w, kind)
        mine = grid.dequantize(grid.codes(w)).numpy()
        theirs = dequantize(quantize(w.numpy(), qtype), qtype)
        np.testing.assert_array_equal(mine, theirs, err_msg=name)


def test_weight_diagnostic_compares_legacy_gguf_grids(world):
    from unlearn_audit.quantize.diagnostic import weight_diff

    u = resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True).path
    o = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path
    diff = weight_diff(u, o, [parse_variant(v) for v in ("rtn:4", "gguf:q4_0", "gguf:q8_0", "gguf:q4_k_m")]).as_dict()
    overall = diff["overall"]
    assert set(overall) == {"rtn:4:g128", "gguf:q4_0", "gguf:q8_0"}
    assert "compared from the two files an audit quantizes" in diff["not_compared"]["gguf:q4_k_m"]
    # the fragile model sits on RTN-4's grid; Q4_0's blocks of 32 with a symmetric scale are another grid
    assert overall["rtn:4:g128"]["same_code_of_moved"] > overall["gguf:q4_0"]["same_code_of_moved"]
    assert overall["gguf:q8_0"]["same_code_of_moved"] < overall["gguf:q4_0"]["same_code_of_moved"]


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                                  "IQ4_NL", "IQ4_XS"])
def test_block_codes_rebuild_ggmls_own_values(kind):
    """The codes and scales unpacked from the bytes ggml's own quantizer writes rebuild, bit for bit, what the
    gguf package's dequantizer reads from them; the codes stay in each type's range."""
    import gguf
    from gguf.quants import dequantize

    from unlearn_audit.quantize.ggml_blocks import LAYOUT, quantize_rows, unpack

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 512)) * 0.05).astype(np.float32)
    x[0, :300] += 0.3  # a shifted block: minimums matter
    x[1, 40:60] = 0.0
    raw = quantize_rows(x, kind)
    blocks = unpack(raw, kind)
    np.testing.assert_array_equal(blocks.values().reshape(x.shape),
                                  dequantize(raw, gguf.GGMLQuantizationType[kind]).reshape(x.shape))
    assert blocks.codes.shape == (6 * 512 // LAYOUT[kind][0], LAYOUT[kind][0])
    span = int(blocks.codes.max()) - int(blocks.codes.min())
    assert 0 < span < 2 ** {"Q8_0": 8, "Q6_K": 6, "Q5_K": 5, "Q5_0": 5, "Q5_1": 5, "Q3_K": 3, "Q2_K": 2}.get(kind, 4)


def test_file_comparison_equals_the_fitted_grid_comparison_on_q4_0(world, tmp_path):
    """Two independent routes to the Q4_0 diagnostic agree: the fixed-grid fit of the checkpoints' weights and
    the block-by-block comparison of the two files llama.cpp wrote."""
    from unlearn_audit.quantize.diagnostic import weight_diff
    from unlearn_audit.quantize.kept_checkpoints import gguf_diff
    from unlearn_audit.quantize.gguf import GGUFQuantizer

    u = resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True)
    o = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    for repo, role in ((u, "unlearned"), (o, "original")):
        GGUFQuantizer("q4_0").apply(load_model(repo).model, workdir=tmp_path, save_to=tmp_path / role)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["original", "unlearned"]  # no full-precision file left
    files = gguf_diff(u.path, o.path, tmp_path / "unlearned", tmp_path / "original")
    fitted = weight_diff(u.path, o.path, [parse_variant("gguf:q4_0")]).overall["gguf:q4_0"]
    assert files["by_type"] == {"Q4_0": {"tensors": 28, "same_code_of_moved": pytest.approx(fitted["same_code_of_moved"],
                                                                                              abs=1e-12)}}
    for key in ("moved", "same_code", "same_code_of_moved", "groups_changed", "scale_change_max", "update_steps",
                "kept", "cosine", "flip_ratio", "flip_size"):  # the files' own values against the fitted grid's
        assert files[key] == pytest.approx(fitted[key], rel=1e-5), key
    assert files["reading"] == fitted["reading"] == "probes decide"


def _publish_quants(world, tmp_path) -> None:
    """A quant repo of the miniature's fragile model as people publish them: GGUF files made by llama.cpp
    (converted, then quantized), with a card naming the base model, in the offline Hub cache."""
    from unlearn_audit.miniature.hub_cache import write_cached_repo

    fragile = load_model(resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True))
    write_gguf(fragile.model, tmp_path / "f32.gguf")
    files = {"README.md": b"---\nbase_model: miniature/fragile\nbase_model_relation: quantized\n---\n# GGUF\n"}
    for kind, ftype in (("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"), ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0")):
        quantize_file(tmp_path / "f32.gguf", tmp_path / f"{kind}.gguf", ftype)
        files[f"fragile-{kind}.gguf"] = (tmp_path / f"{kind}.gguf").read_bytes()
    write_cached_repo(world.hub_cache, "quantfolk/fragile-GGUF", files)
    from unlearn_audit.inputs.calibration import calibration_set
    from unlearn_audit.miniature.hub_cache import folder_files

    parse_variant("gptq:4").quantize(fragile.repo.path, fragile.tokenizer, calibration_set("generic"),
                                     save_to=tmp_path / "gptq")
    gptq = folder_files(tmp_path / "gptq")
    gptq["README.md"] = b"---\nbase_model: miniature/fragile\nbase_model_relation: quantized\n---\n# GPTQ\n"
    write_cached_repo(world.hub_cache, "quantfolk/fragile-GPTQ", gptq)


def test_published_quants_are_audited_offline(world, tmp_path, monkeypatch):
    """--published: the listing call replaced (the one network call), the quant repo in the offline cache;
    the Q4_0 file is audited as a variant (its weights are the file's, bit for bit what llama.cpp wrote), the
    original quantized the same way; the Q8_0 file is left out by the pattern; a GPTQ repo is audited as
    its checkpoint; a repo the cache does not hold is listed as not audited; the report has the table."""
    _publish_quants(world, tmp_path)
    monkeypatch.setattr("unlearn_audit.quantize.published.list_quantized",
                        lambda model_id, limit: ["quantfolk/fragile-GGUF", "quantfolk/fragile-GPTQ",
                                                 "quantfolk/fragile-MLX"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "rtn:4", "--published",
                                      "--published-files", "*Q4_0*", "--max-items", "6", "--min-items", "1", "--no-cache",
                                      "--cache-dir", str(world.hub_cache), "--out", str(out)])
    assert result.exit_code in (0, 1, 4), result.output
    record = json.loads((out / "report.json").read_text())
    label = "published:quantfolk/fragile-GGUF/fragile-Q4_0.gguf"
    assert label in record["variants"]
    runs = {(r["role"], r["variant"]): r for r in record["runs"]}
    mine, theirs = runs[("unlearned", label)]["settings"], runs[("original", label)]["settings"]
    assert mine["file_type"] == "q4_0" and mine["commit"] and mine["tensor_types"]["Q4_0"] == 29
    assert theirs["reproduced"].startswith("llama.cpp file type Q4_0")
    assert mine["types_by_tensor"] == theirs["types_by_tensor"]  # the same per-tensor choices
    # the diagnostic compares the published file with the original's reproduction, block by block: the file is
    # llama.cpp's Q4_0 of the fragile model, so it reads as the fitted Q4_0 grids do
    from unlearn_audit.quantize.diagnostic import weight_diff

    compared = record["weight_diff"]["overall"][label]
    fitted = weight_diff(resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True).path,
                         resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path,
                         [parse_variant("gguf:q4_0")]).overall["gguf:q4_0"]
    assert compared["by_type"]["Q4_0"]["tensors"] == 28
    assert compared["same_code_of_moved"] == pytest.approx(fitted["same_code_of_moved"], abs=1e-12)
    published = {e["repo"]: e for e in record["published"]}
    assert published["quantfolk/fragile-GGUF"]["files"] == ["fragile-Q4_0.gguf"]
    assert "does not match" in published["quantfolk/fragile-GGUF"]["skipped"]["fragile-Q8_0.gguf"]
    # a GPTQ repo: the checkpoint itself, loaded through transformers; the original at full precision
    gptq = "published:quantfolk/fragile-GPTQ/*"
    assert published["quantfolk/fragile-GPTQ"]["files"] == ["*"]
    assert runs[("unlearned", gptq)]["proof"]["layers_quantized"] == 28
    assert runs[("original", gptq)]["items"] == runs[("original", "full")]["items"]
    assert "cannot be reproduced" in runs[("original", gptq)]["settings"]["original"]
    assert "no GGUF file" in published["quantfolk/fragile-MLX"]["skipped"]["*"]  # not in the cache
    markdown = (out / "report.md").read_text()
    assert "## Published quants" in markdown and "fragile-Q4_0.gguf" in markdown and "not audited" in markdown
    # the same weights as loading the file in transformers (an independent GGUF reader)
    from transformers import AutoModelForCausalLM

    folder = resolve("quantfolk/fragile-GGUF", cache_dir=world.hub_cache, offline=True).path
    theirs_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="fragile-Q4_0.gguf", dtype=torch.float32)
    fragile = load_model(resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True)).model
    from unlearn_audit.quantize.published import PublishedGGUF

    variant = PublishedGGUF("quantfolk/fragile-GGUF", "fragile-Q4_0.gguf")
    variant.fetched(folder / "fragile-Q4_0.gguf", None)
    variant.apply_role("unlearned", fragile)
    for name, param in fragile.named_parameters():
        torch.testing.assert_close(param, theirs_model.get_parameter(name), rtol=0, atol=0, msg=name)


def test_published_needs_a_hub_model(tmp_path, world):
    result = CliRunner().invoke(app, ["check", str(tmp_path), "--published", "--cache-dir", str(world.hub_cache),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2


def test_a_variant_served_from_a_folder_keeps_the_gguf_files_to_compare(world, tmp_path, monkeypatch):
    """``--engine vllm`` serves each variant from a folder the audit writes; with a k-quant variant, the GGUF files
    kept for the diagnostic live beside it and survive it. vLLM itself is stood in for by an engine that loads the
    served folder with transformers (the vLLM tests run the real one): its figures equal the in-memory run's."""
    from unlearn_audit import engines
    from unlearn_audit.engines.hf import HFEngine as Engine

    served: list[Path] = []

    class FolderEngine(Engine):
        def __init__(self, model, tokenizer, source=None, dtype=None, settings=None, **kwargs):  # noqa: ANN001
            from transformers import AutoModelForCausalLM

            served.append(source)
            assert (source / "config.json").is_file()
            super().__init__(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval(), tokenizer,
                             **kwargs)

    monkeypatch.setattr("unlearn_audit.engines.vllm.require_vllm", lambda: None)
    monkeypatch.setitem(engines.ENGINES, "vllm", FolderEngine)
    records = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        result = CliRunner().invoke(app, ["check", "miniature/fragile", "--quant", "gguf:q4_k_m", "--engine", engine,
                                          "--max-items", "3", "--min-items", "1", "--no-cache", "--cache-dir",
                                          str(world.hub_cache), "--out", str(out), "--scratch", str(tmp_path / "s")])
        assert result.exit_code in (0, 1, 4), result.output
        records[engine] = json.loads((out / "report.json").read_text())
    assert any("gguf_q4_k_m" in str(folder) for folder in served)
    compared = records["vllm"]["weight_diff"]["overall"]["gguf:q4_k_m"]
    assert compared == records["hf"]["weight_diff"]["overall"]["gguf:q4_k_m"] and "by_type" in compared
    scores = {engine: [(r["role"], r["variant"], r["metrics"]) for r in record["runs"]]
              for engine, record in records.items()}
    assert scores["vllm"] == scores["hf"]
