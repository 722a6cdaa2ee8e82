"""The weight-level diagnostic: by hand on a tiny pair of checkpoints, and on the miniature."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from unlearn_audit.cli import app
from unlearn_audit.hub import resolve
from unlearn_audit.quantize import parse_variants
from unlearn_audit.weights import weight_diff


def _checkpoint(folder: Path, weight: list[list[float]]) -> Path:
    folder.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.tensor(weight),
               "model.norm.weight": torch.ones(4), "lm_head.weight": torch.ones(2, 4)}, str(folder / "model.safetensors"))
    return folder


def test_diff_by_hand(tmp_path):
    # 2-bit RTN, one group of 4. Original [0, 1, 2, 3]: scale 1, zero 0 -> kept exactly.
    # Unlearned [0.1, 1, 2, 2]: scale 1.9/3, zero round(-0.1/(1.9/3)) = 0; codes 0, 2, 3, 3
    # -> [0, 1.2667, 1.9, 1.9]. Moved: weights 0 and 3. Q equal: weight 0 only.
    o = _checkpoint(tmp_path / "o", [[0.0, 1.0, 2.0, 3.0]])
    u = _checkpoint(tmp_path / "u", [[0.1, 1.0, 2.0, 2.0]])
    result = weight_diff(u, o, parse_variants(["rtn:2:g4"]))
    (layer,) = result.layers["rtn:2:g4"]  # lm_head and norms are excluded
    assert layer.name == "model.layers.0.mlp.up_proj.weight"
    assert layer.moved == 0.5
    assert layer.same_code == 0.25
    assert layer.same_code_of_moved == 0.5
    s = 1.9 / 3
    expected = math.sqrt((2 * s - 1) ** 2 + (3 * s - 2) ** 2 + (3 * s - 3) ** 2) / math.sqrt(0.1**2 + 1.0**2)
    assert layer.norm_ratio == pytest.approx(expected, rel=1e-5)
    assert result.overall["rtn:2:g4"]["same_code_of_moved"] == 0.5


def test_fragile_maps_back_and_robust_does_not(world):
    def diff(name: str):  # noqa: ANN202
        u = resolve(f"miniature/{name}", cache_dir=world.hub_cache, offline=True).path
        o = resolve("miniature/original", cache_dir=world.hub_cache, offline=True).path
        return weight_diff(u, o, parse_variants(["rtn:4,rtn:8,bnb:fp4"])).overall

    fragile, robust = diff("fragile"), diff("robust")
    # by construction: every fragile weight stays in its RTN-4 and FP4 cell of the original
    assert fragile["rtn:4:g128"]["same_code"] == 1.0 and fragile["rtn:4:g128"]["norm_ratio"] == 0.0
    assert fragile["bnb:fp4"]["same_code"] == 1.0
    assert fragile["rtn:8:g128"]["same_code_of_moved"] < 0.5  # a finer grid keeps the update
    assert robust["rtn:4:g128"]["same_code_of_moved"] < 0.5
    assert fragile["rtn:4:g128"]["moved"] > 0.5  # unlearning did move most weights


def test_diff_command(world, tmp_path):
    import json

    result = CliRunner().invoke(app, ["diff", "miniature/fragile", "--original", "miniature/original", "--quant",
                                      "rtn:4", "--cache-dir", str(world.hub_cache), "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "rtn:4:g128" in result.output
    assert json.loads((tmp_path / "d.json").read_text())["overall"]["rtn:4:g128"]["same_code"] == 1.0
