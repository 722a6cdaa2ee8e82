"""The probe contract, over every registered probe: what it declares is what it does, on the miniature."""

from __future__ import annotations

import dataclasses
import math

import pytest
from typer.testing import CliRunner

from unlearn_audit.analysis import METRIC_LABELS, STATISTICS
from unlearn_audit.cli import app
from unlearn_audit.config import ProbeSettings
from unlearn_audit.data import ForgetData, cut_like_verbmem, load_forget_data
from unlearn_audit.hub import resolve
from unlearn_audit.models import load_model
from unlearn_audit.probes import muse
from unlearn_audit.probes.engine import Engine
from unlearn_audit.probes.registry import PROBES, probes_for
from unlearn_audit.spec import spec_for_dataset


@pytest.fixture(scope="module")
def engine(world):
    loaded = load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))
    return Engine(loaded.model, loaded.tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def data(world, engine) -> ForgetData:
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    return cut_like_verbmem(load_forget_data(folder, spec_for_dataset("miniature/news"), max_items=4), engine.tokenizer)


SETTINGS = ProbeSettings(verbmem_max_new_tokens=16, knowmem_max_new_tokens=8)


@pytest.mark.parametrize("name", list(PROBES))
def test_every_probe_does_what_it_declares(name, engine, data):
    info = PROBES[name]
    assert info.available(data)
    for field in info.needs:  # it names real fields of the forget data
        assert field in {f.name for f in dataclasses.fields(ForgetData)}, field
    ticks = []
    output = info.run(engine, data, SETTINGS, ticks.append)
    assert output.metric == name and output.kind == info.kind
    assert len(output.items) == info.count(data) == sum(ticks)  # progress counts every item once
    ids = [item.item_id for item in output.items]
    assert len(set(ids)) == len(ids)
    for item in output.items:
        assert math.isfinite(item.score)
        if info.kind == "mean":
            assert 0.0 <= item.score <= 1.0
    if info.kind == "auc":
        assert {item.extra["split"] for item in output.items} == {"forget", "holdout"}
    assert name in METRIC_LABELS and any(s.probe == name for s in STATISTICS)  # the analysis knows its metric


def test_the_registry_gives_muses_own_figures(engine, data):
    """Running through the registry is calling MUSE's probe functions with the audit's settings."""
    through = PROBES["knowmem_f"].run(engine, data, SETTINGS, None)
    direct = muse.knowmem(engine, data.knowmem_forget, "knowmem_f", 8)
    assert [i.score for i in through.items] == [i.score for i in direct.items]
    assert [i.generation for i in through.items] == [i.generation for i in direct.items]


def test_an_optional_probe_without_data_does_not_run(data):
    bare = dataclasses.replace(data, holdout_prompts=[], holdout_refs=[])
    assert [info.name for info in probes_for(bare)] == ["verbmem_f", "knowmem_f", "knowmem_r", "privleak"]
    assert [info.name for info in probes_for(data)][-1] == "verbmem_h"


def test_probes_command_lists_the_registry():
    result = CliRunner().invoke(app, ["probes"])
    assert result.exit_code == 0
    for name in PROBES:
        assert name in result.output
