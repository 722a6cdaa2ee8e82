"""The weight-level diagnostic: by hand on a 2x8 pair, against bitsandbytes' own quantizer and an independent RTN, and
in the regimes that matter (identical quantized models, a dense update far below a step, an update of several steps,
a dtype change with no update, the miniature's fragile and robust checkpoints). It says "recovery certain" only where
the quantized models are identical; everywhere else the probes decide."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.miniature.nudge import nudge_checkpoint
from unlearn_audit.quantize import parse_variants
from unlearn_audit.quantize.diagnostic import weight_diff
from unlearn_audit.quantize.rtn import rtn_grid

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
    # What quantization keeps of the update d = u - o, q = Q(u) - Q(o), each on its own grid:
    #  A: same grid, 1.4 -> level 1 = 1.0: q = 0 (d = .4).
    #  B: u's grid .875/3: Q(u) = [0, .2917, .5833, .875], Q(o) = o: q = [0, .0417, .0833, .125] (d = .125 at the last).
    #  C: same grid, -.2 -> level 2 = 0.0, Q(o) = -.5: q = .5 (d = .3).
    dot, dd = 0.125 * 0.125 + 0.5 * 0.3, 0.4**2 + 0.125**2 + 0.3**2
    qq = (0.875 / 3 - 0.25) ** 2 + (2 * 0.875 / 3 - 0.5) ** 2 + 0.125**2 + 0.5**2
    assert overall["kept"] == pytest.approx(dot / dd, rel=1e-5)
    assert overall["cosine"] == pytest.approx(dot / (dd * qq) ** 0.5, rel=1e-5)
    # one moved weight changed level (C); expected if each sat at random in its cell: .4/1 + .125/.25 + .3/.5 = 1.5
    assert overall["flips_expected"] == pytest.approx(1.5 / 3, rel=1e-5)
    assert overall["flip_ratio"] == pytest.approx(1 / 1.5, rel=1e-5)
    assert overall["flip_size"] == pytest.approx(0.5 / 0.5, rel=1e-5)  # a full step
    assert layer.kept == pytest.approx(dot / dd, rel=1e-5)
    assert not layer.identical and overall["tensors_identical"] == 0 and overall["others_moved"] == 0
    assert overall["identical"] is False
    assert overall["reading"] == "probes decide"


def test_identical_quantized_models_make_recovery_certain(tmp_path):
    """Moves inside every cell with each group's range fixed: Q(u) == Q(o), and only then "recovery certain"; the same
    pair with lm_head moved (which no quantizer here touches) is no longer identical."""
    o = torch.tensor([[0.0, 1.0, 2.0, 3.0, -1.0, -0.5, 0.0, 0.5]])
    u = o.clone()
    u[0, 1], u[0, 2], u[0, 5] = 1.3, 1.8, -0.4  # levels 1, 2 and 1 again; the groups' min and max unchanged
    folder_o = _checkpoint(tmp_path / "o", o)
    result = weight_diff(_checkpoint(tmp_path / "u", u), folder_o, parse_variants(["rtn:2:g4"]))
    overall = result.overall["rtn:2:g4"]
    assert overall["identical"] is True and overall["tensors_identical"] == overall["tensors"] == 1
    assert overall["kept"] == 0.0 and overall["flip_ratio"] == 0.0
    assert overall["reading"] == "recovery certain"
    (tmp_path / "u2").mkdir()
    save_file({NAME: u, "model.norm.weight": torch.ones(8), "lm_head.weight": torch.full((2, 8), 1.001)},
              str(tmp_path / "u2" / "model.safetensors"))
    moved_head = weight_diff(tmp_path / "u2", folder_o, parse_variants(["rtn:2:g4"]))
    assert moved_head.others_moved == ["lm_head.weight"]
    assert moved_head.overall["rtn:2:g4"]["identical"] is False
    assert moved_head.overall["rtn:2:g4"]["reading"] == "probes decide"


def _rtn_numpy(w, bits: int, group: int):  # noqa: ANN001, ANN202
    """Asymmetric min-max RTN per group of columns, written apart from the tool's (numpy, float64)."""
    import numpy as np

    out = np.empty_like(w, dtype=np.float64)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], group):
            x = w[r, g:g + group].astype(np.float64)
            scale = (x.max() - x.min()) / (2**bits - 1)
            zero = np.round(-x.min() / scale)
            out[r, g:g + group] = (np.clip(np.round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale
    return out


def test_kept_share_equals_an_independent_computation(tmp_path):
    """kept = <Q(u) - Q(o), u - o> / ||u - o||^2 against quantizations the diagnostic did not compute: a numpy RTN and
    bitsandbytes' own FP4/NF4 quantize-dequantize."""
    import bitsandbytes.functional as bnbf
    import numpy as np

    torch.manual_seed(4)
    o = torch.randn(64, 256) * 0.05
    u = o + 0.004 * torch.randn_like(o)  # about a sixth of a 4-bit step
    overall = weight_diff(_checkpoint(tmp_path / "u", u), _checkpoint(tmp_path / "o", o),
                          parse_variants(["rtn:4,bnb:fp4,bnb:nf4"])).overall
    d = (u - o).double().numpy()

    def kept(qu: np.ndarray, qo: np.ndarray) -> float:
        return float(((qu - qo) * d).sum() / (d * d).sum())

    rtn = kept(_rtn_numpy(u.numpy(), 4, 128), _rtn_numpy(o.numpy(), 4, 128))
    assert overall["rtn:4:g128"]["kept"] == pytest.approx(rtn, rel=1e-4)
    for kind in ("fp4", "nf4"):
        def q(w: torch.Tensor) -> np.ndarray:
            packed, state = bnbf.quantize_4bit(w.contiguous(), blocksize=64, quant_type=kind)
            return bnbf.dequantize_4bit(packed, state).double().numpy()
        assert overall[f"bnb:{kind}"]["kept"] == pytest.approx(kept(q(u), q(o)), rel=1e-4)
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


def test_dense_update_far_below_a_step_is_left_to_the_probes(tmp_path):
    """The paper's regime, a dense update far below a step: 99% of the levels stay, yet the few that change carry the
    update whole (kept about 1, flips as many as dithering predicts), so the diagnostic does not predict recovery."""
    torch.manual_seed(1)
    o = torch.randn(256, 512) * 0.02
    sign = torch.randint(0, 2, o.shape).float() * 2 - 1
    overall = _pair(tmp_path, o, o * (1 + 1e-4 * sign))
    for label in ("rtn:4:g128", "bnb:fp4"):
        assert overall[label]["moved"] == 1.0
        assert overall[label]["same_code_of_moved"] >= 0.99
        assert overall[label]["groups_changed"] > 0.9  # every group's range moved by a hair...
        assert overall[label]["scale_change_max"] < 2e-4  # ...and only a hair
        assert overall[label]["identical"] is False
        assert overall[label]["reading"] == "probes decide"
    assert 0.8 < overall["rtn:4:g128"]["kept"] < 1.2  # rounding dithers the update: about all of it survives...
    assert overall["rtn:4:g128"]["cosine"] < 0.3  # ...as a sparse copy far from its direction
    assert 0.8 < overall["rtn:4:g128"]["flip_ratio"] < 1.2
    assert overall["rtn:4:g128"]["flip_size"] == pytest.approx(1.0, abs=0.05)  # a full step each


def test_update_of_several_steps_survives_whole(tmp_path):
    torch.manual_seed(2)
    o = torch.randn(128, 256) * 0.02
    step = rtn_grid(o, 4, 128).steps()
    sign = torch.randint(0, 2, o.shape).float() * 2 - 1
    overall = _pair(tmp_path, o, o + 3 * step * sign)
    assert overall["rtn:4:g128"]["same_code_of_moved"] < 0.5
    assert overall["rtn:4:g128"]["update_steps"] == pytest.approx(3.0, rel=1e-3)
    assert overall["rtn:4:g128"]["kept"] == pytest.approx(1.0, abs=0.1)
    assert overall["rtn:4:g128"]["reading"] == "probes decide"


def test_bfloat16_copy_with_no_update_is_not_moved(tmp_path):
    torch.manual_seed(3)
    o = torch.randn(64, 128)
    result = weight_diff(_checkpoint(tmp_path / "u", o.to(torch.bfloat16)), _checkpoint(tmp_path / "o", o),
                         parse_variants(["rtn:4"]))
    assert result.compare_dtype == "bfloat16"
    assert result.overall["rtn:4:g128"]["moved"] == 0.0
    assert result.overall["rtn:4:g128"]["reading"] == "nothing moved"


def test_float32_update_of_a_bfloat16_original_is_seen_whole(tmp_path):
    """Unlearned in float32 from a bfloat16 release and saved so: the update lies below bfloat16's resolution, and
    comparing in the unlearned checkpoint's dtype keeps it (rounding both to bfloat16 would erase it)."""
    torch.manual_seed(3)
    o = (torch.randn(64, 128) * 0.05).to(torch.bfloat16)
    u = o.float() + 1e-6 * torch.randn(64, 128)  # far below a bfloat16 ulp at 0.05 (2.4e-4)
    result = weight_diff(_checkpoint(tmp_path / "u", u), _checkpoint(tmp_path / "o", o), parse_variants(["rtn:4"]))
    assert result.compare_dtype == "float32"
    assert result.overall["rtn:4:g128"]["moved"] > 0.99  # all but draws below float32's own resolution there


def test_miniature_fragile_robust_and_nudged(world, tmp_path):
    original = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path

    def diff(folder: Path) -> dict:
        return weight_diff(folder, original, parse_variants(["rtn:4,rtn:8,bnb:fp4"])).overall

    fragile = diff(resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True).path)
    robust = diff(resolve("miniature/robust", cache_dir=world.hub_cache, offline=True).path)
    nudged = diff(nudge_checkpoint(original, tmp_path / "nudged", rel=1e-4, seed=0))
    # by construction: every fragile weight stays in its RTN-4 and FP4 cell of the original, ranges fixed, the rest
    # frozen: the quantized models are identical
    for label in ("rtn:4:g128", "bnb:fp4"):
        assert fragile[label]["same_code_of_moved"] == 1.0 and fragile[label]["groups_changed"] == 0.0
        assert fragile[label]["identical"] is True and fragile[label]["kept"] == 0.0
        assert fragile[label]["reading"] == "recovery certain"
    assert fragile["rtn:4:g128"]["moved"] > 0.5  # unlearning did move most weights
    assert fragile["rtn:8:g128"]["reading"] == "probes decide"  # a finer grid keeps it
    assert fragile["rtn:8:g128"]["kept"] == pytest.approx(1.0, abs=0.05)
    assert robust["rtn:4:g128"]["same_code_of_moved"] < 0.5
    assert robust["rtn:4:g128"]["reading"] == "probes decide"
    assert nudged["rtn:4:g128"]["same_code_of_moved"] >= 0.99
    assert nudged["rtn:4:g128"]["reading"] == "probes decide"  # 99.9% of the levels equal is not identical


def test_diff_tables_fit_80_columns_and_cut_nothing(world):
    """The totals and the per-layer tables at 80 columns: no line wider, no header or cell cut with an ellipsis."""
    from rich.console import Console

    from unlearn_audit.cli.inspect import diff_table

    u = resolve("miniature/fragile", cache_dir=world.hub_cache, offline=True)
    o = resolve("miniature/original", cache_dir=world.hub_cache, offline=True)
    record = weight_diff(u.path, o.path, parse_variants(["rtn:4", "bnb:nf4"]), labels=(u.reference, o.reference)).as_dict()
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(diff_table(record, layers=True))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for header in ("quantizer", "layer", "moved", "same", "grid", "kept", "cos", "flips", "reading"):
        assert header in text
    assert "0.attn.q_proj" in text and "recovery certain" in text


def test_diff_command(world, tmp_path):
    result = CliRunner().invoke(app, ["diff", "miniature/fragile", "--original", "miniature/original", "--quant",
                                      "rtn:4,gptq:4", "--cache-dir", str(world.hub_cache), "--json",
                                      str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "rtn:4:g128" in result.output and "recovery" in result.output and "certain" in result.output
    assert "gptq:4" in result.output and "not compared" in result.output
    assert "predicts" not in result.output
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["overall"]["rtn:4:g128"]["same_code_of_moved"] == 1.0
    assert record["overall"]["rtn:4:g128"]["reading"] == "recovery certain"
