"""The weight-level diagnostic: by hand on a 2x8 pair, against bitsandbytes' own quantizer, and in the
regimes that matter (a dense update far below a step, an update of several steps, a dtype change with no
update, the miniature's fragile and robust checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.hub import resolve
from unlearn_audit.miniature.nudge import nudge_checkpoint
from unlearn_audit.quantize import parse_variants
from unlearn_audit.quantize.rtn import rtn_grid
from unlearn_audit.weights import weight_diff

NAME = "model.layers.0.mlp.up_proj.weight"


def _checkpoint(folder: Path, weight: torch.Tensor) -> Path:
    folder.mkdir()
    save_file({NAME: weight, "model.norm.weight": torch.ones(weight.shape[1]),
               "lm_head.weight": torch.ones(2, weight.shape[1])}, str(folder / "model.safetensors"))
    return folder


def test_diff_by_hand_on_a_2x8_pair(tmp_path):
    # RTN 2 bits (levels 0..3), groups of 4: four groups.
    #  A: o [0, 1, 2, 3]        scale 1, zero 0.    u moves 1 -> 1.4: same range, level round(1.4) = 1: same.
    #  B: o [0, .25, .5, .75]   scale .25, zero 0.  u moves .75 -> .875: u's own scale .875/3 (changed by 1/6),
    #     levels 0, round(.857) = 1, round(1.714) = 2, 3: same; on o's grid .875/.25 = 3.5 -> clamp 3: same.
    #  C: o [-1, -.5, 0, .5]    scale .5, zero 2.   u moves -.5 -> -.2: level round(-.4) + 2 = 2, o's 1: differs.
    #  D: o [2, 2, 2, 2]        constant, unchanged.
    o = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 0.25, 0.5, 0.75], [-1.0, -0.5, 0.0, 0.5, 2.0, 2.0, 2.0, 2.0]])
    u = o.clone()
    u[0, 1], u[0, 7], u[1, 1] = 1.4, 0.875, -0.2
    result = weight_diff(_checkpoint(tmp_path / "u", u), _checkpoint(tmp_path / "o", o), parse_variants(["rtn:2:g4"]))
    (layer,) = result.layers["rtn:2:g4"]  # lm_head and norms are excluded
    assert layer.name == NAME
    assert layer.moved == pytest.approx(3 / 16)
    assert layer.same_code == pytest.approx(15 / 16)
    assert layer.same_code_of_moved == pytest.approx(2 / 3)
    assert layer.same_code_common_of_moved == pytest.approx(2 / 3)
    assert layer.groups_changed == pytest.approx(1 / 4)  # B only
    assert layer.scale_change_max == pytest.approx(1 / 6, rel=1e-5)
    assert layer.update_steps == pytest.approx((0.4 / 1 + 0.125 / 0.25 + 0.3 / 0.5) / 3, rel=1e-5)
    assert layer.code_distance == pytest.approx(1 / 3)
    overall = result.overall["rtn:2:g4"]
    assert overall["scale_change_mean"] == pytest.approx(1 / 24, rel=1e-5)
    assert overall["reading"] == "cannot tell"  # 67%: between 50% and 95%


def test_bitsandbytes_grids_match_the_library(tmp_path):
    """The 4-bit levels the diagnostic assigns are the ones bitsandbytes itself stores (an independent method)."""
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    w = torch.randn(24, 100)  # 2400 elements: blocks of 64 cross rows, the last block is short
    for q in parse_variants(["bnb:fp4,bnb:nf4"]):
        grid = q.fit_grid(w)
        levels = grid.codes(w).long()
        absmax = grid.absmax.expand(-1, 64).reshape(-1)[: w.numel()].reshape(w.shape)
        mine = grid.code[levels] * absmax
        packed, state = bnbf.quantize_4bit(w.contiguous(), blocksize=64, quant_type=q.kind)
        torch.testing.assert_close(mine, bnbf.dequantize_4bit(packed, state).reshape(w.shape), rtol=0, atol=0)


def _pair(tmp_path: Path, o: torch.Tensor, u: torch.Tensor) -> dict:
    result = weight_diff(_checkpoint(tmp_path / "u", u), _checkpoint(tmp_path / "o", o),
                         parse_variants(["rtn:4,bnb:fp4"]))
    return result.overall


def test_dense_update_far_below_a_step_predicts_recovery(tmp_path):
    torch.manual_seed(1)
    o = torch.randn(256, 512) * 0.02
    sign = torch.randint(0, 2, o.shape).float() * 2 - 1
    overall = _pair(tmp_path, o, o * (1 + 1e-4 * sign))
    for label in ("rtn:4:g128", "bnb:fp4"):
        assert overall[label]["moved"] == 1.0
        assert overall[label]["same_code_of_moved"] >= 0.99
        assert overall[label]["groups_changed"] > 0.9  # every group's range moved by a hair...
        assert overall[label]["scale_change_max"] < 2e-4  # ...and only a hair
        assert overall[label]["reading"] == "predicts recovery"


def test_update_of_several_steps_predicts_that_it_survives(tmp_path):
    torch.manual_seed(2)
    o = torch.randn(128, 256) * 0.02
    step = rtn_grid(o, 4, 128).steps()
    sign = torch.randint(0, 2, o.shape).float() * 2 - 1
    overall = _pair(tmp_path, o, o + 3 * step * sign)
    assert overall["rtn:4:g128"]["same_code_of_moved"] < 0.5
    assert overall["rtn:4:g128"]["update_steps"] == pytest.approx(3.0, rel=1e-3)
    assert overall["rtn:4:g128"]["reading"] == "predicts the update survives"


def test_bfloat16_copy_with_no_update_is_not_moved(tmp_path):
    torch.manual_seed(3)
    o = torch.randn(64, 128)
    result = weight_diff(_checkpoint(tmp_path / "u", o.to(torch.bfloat16)), _checkpoint(tmp_path / "o", o),
                         parse_variants(["rtn:4"]))
    assert result.compare_dtype == "bfloat16"
    assert result.overall["rtn:4:g128"]["moved"] == 0.0
    assert result.overall["rtn:4:g128"]["reading"] == "cannot tell"  # nothing to predict


def test_miniature_fragile_robust_and_nudged(world, tmp_path):
    original = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path

    def diff(folder: Path) -> dict:
        return weight_diff(folder, original, parse_variants(["rtn:4,rtn:8,bnb:fp4"])).overall

    fragile = diff(resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True).path)
    robust = diff(resolve("miniature/robust", cache_dir=world.hub_cache, offline=True).path)
    nudged = diff(nudge_checkpoint(original, tmp_path / "nudged", rel=1e-4, seed=0))
    # by construction: every fragile weight stays in its RTN-4 and FP4 cell of the original, ranges fixed
    for label in ("rtn:4:g128", "bnb:fp4"):
        assert fragile[label]["same_code_of_moved"] == 1.0 and fragile[label]["groups_changed"] == 0.0
        assert fragile[label]["reading"] == "predicts recovery"
    assert fragile["rtn:4:g128"]["moved"] > 0.5  # unlearning did move most weights
    assert fragile["rtn:8:g128"]["reading"] == "predicts the update survives"  # a finer grid keeps it
    assert robust["rtn:4:g128"]["same_code_of_moved"] < 0.5
    assert robust["rtn:4:g128"]["reading"] == "predicts the update survives"
    assert nudged["rtn:4:g128"]["same_code_of_moved"] >= 0.99
    assert nudged["rtn:4:g128"]["reading"] == "predicts recovery"


def test_diff_command(world, tmp_path):
    result = CliRunner().invoke(app, ["diff", "miniature/fragile", "--original", "miniature/original", "--quant",
                                      "rtn:4,gptq:4", "--cache-dir", str(world.hub_cache), "--json",
                                      str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "rtn:4:g128" in result.output and "predicts" in result.output
    assert "gptq:4" in result.output and "not compared" in result.output
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["overall"]["rtn:4:g128"]["same_code_of_moved"] == 1.0
    assert record["overall"]["rtn:4:g128"]["reading"] == "predicts recovery"
