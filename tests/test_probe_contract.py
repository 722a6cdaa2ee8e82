"""The probe contract, over every registered probe: what it declares is what it does, on the miniature."""

from __future__ import annotations

import dataclasses
import math

import pytest
from typer.testing import CliRunner

from unlearn_audit.analysis.figures import METRIC_LABELS, STATISTICS
from unlearn_audit.cli import app
from unlearn_audit.config import ProbeSettings
from unlearn_audit.engines.hf import HFEngine as Engine
from unlearn_audit.inputs.data import ForgetData, cut_like_verbmem, load_forget_data
from unlearn_audit.inputs.hub import resolve
from unlearn_audit.inputs.models import load_model
from unlearn_audit.inputs.spec import parse_spec, spec_for_dataset
from unlearn_audit.probes import muse
from unlearn_audit.probes.registry import PROBES, probes_for


@pytest.fixture(scope="module")
def engine(world):
    loaded = load_model(resolve("miniature/original", cache_dir=world.hub_cache, offline=True))
    return Engine(loaded.model, loaded.tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def data(world, engine) -> ForgetData:
    folder = resolve("miniature/news", kind="dataset", cache_dir=world.hub_cache, offline=True).path
    return cut_like_verbmem(load_forget_data(folder, spec_for_dataset("miniature/news"), max_items=4), engine.tokenizer)


@pytest.fixture(scope="module")
def benchmarks(data, tmp_path_factory) -> dict[str, ForgetData]:
    """Each benchmark's forget data, in its Hub layout, written from the miniature's stories (the worlds' own
    writers; no model trained)."""
    from unlearn_audit.miniature.corpus import make_corpus
    from unlearn_audit.miniature.worlds import _mcq_parquet, mcq_rows, tofu_files

    corpus = make_corpus(12, 12, 12, 7)
    pool = corpus.forget + corpus.retain + corpus.holdout
    tofu = tmp_path_factory.mktemp("tofu")
    for name, content in tofu_files(corpus.forget, corpus.retain, corpus.holdout, pool, 7).items():
        (tofu / name).write_bytes(content)
    wmdp = tmp_path_factory.mktemp("wmdp")
    for config, docs in (("wmdp-bio", corpus.forget), ("stories", corpus.retain)):
        (wmdp / config).mkdir()
        (wmdp / config / "test-00000-of-00001.parquet").write_bytes(_mcq_parquet(mcq_rows(docs, pool, 7)))
    wmdp_spec = parse_spec({"dataset": str(wmdp), "benchmark": "wmdp",
                            "mmlu": {"dataset": str(wmdp), "configs": ["stories"]}}, "test")
    return {"muse": data,
            "tofu": load_forget_data(tofu, parse_spec({"dataset": str(tofu), "benchmark": "tofu"}, "test"), 3),
            "wmdp": load_forget_data(wmdp, wmdp_spec, 5, wmdp)}


SETTINGS = ProbeSettings(verbmem_max_new_tokens=16, knowmem_max_new_tokens=8)


CASES = [(name, bench) for name, info in PROBES.items()
         for bench in (("muse", "tofu", "wmdp") if info.benchmark == "all" else (info.benchmark,))]
"""Each probe on its benchmark; a probe of every benchmark (the loss screen) on each."""


@pytest.mark.parametrize(("name", "bench"), CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_every_probe_does_what_it_declares(name, bench, engine, benchmarks):
    info = PROBES[name]
    data = benchmarks[bench]
    if not info.available(data):  # an optional probe whose data this benchmark lacks (the screen's held-out texts)
        assert not info.required and info.count(data) == 0
        return
    assert {p.benchmark for p in probes_for(data)} <= {bench, "all"}  # no other benchmark's probes
    for field in info.needs:  # it names real fields of the forget data
        assert field in {f.name for f in dataclasses.fields(ForgetData)}, field
    ticks = []
    output = info.run(engine, data, SETTINGS, ticks.append)
    assert output.metric == name and output.kind == info.kind
    assert info.count(data) == sum(ticks) > 0  # progress counts every unit of work once
    if info.benchmark != "tofu":  # a TOFU item is a generation and several scored answers
        assert len(output.items) == info.count(data)
    ids = [item.item_id for item in output.items]
    assert len(set(ids)) == len(ids)
    low, high = info.score_range
    for item in output.items:
        assert math.isfinite(item.score)
        assert low <= item.score <= high
    if info.kind == "auc":
        assert {item.extra["split"] for item in output.items} == {"forget", "holdout"}
    stats = [s for s in STATISTICS if s.probe == name]  # the analysis knows its figures, the reports their names
    assert stats and all(s.name in METRIC_LABELS for s in stats)
    for s in stats:
        if s.kind == "mean" and s.key != "score":
            assert all(math.isfinite(item.extra[s.key]) for item in output.items), s.key


def test_the_registry_gives_muses_own_figures(engine, data):
    """Running through the registry is calling MUSE's probe functions with the audit's settings."""
    through = PROBES["knowmem_f"].run(engine, data, SETTINGS, None)
    direct = muse.knowmem(engine, data.knowmem_forget, "knowmem_f", 8)
    assert [i.score for i in through.items] == [i.score for i in direct.items]
    assert [i.generation for i in through.items] == [i.generation for i in direct.items]


def test_an_optional_probe_without_data_does_not_run(data):
    bare = dataclasses.replace(data, holdout_prompts=[], holdout_refs=[])
    assert [info.name for info in probes_for(bare)] == ["screen_f", "screen_h", "verbmem_f", "knowmem_f", "knowmem_r",
                                                        "privleak"]
    assert [info.name for info in probes_for(data)][-1] == "verbmem_h"


def test_probes_command_lists_the_registry():
    result = CliRunner().invoke(app, ["probes"])
    assert result.exit_code == 0
    for name in PROBES:
        assert name in result.output
