"""Phase three of an audit, the runs: every model at full precision and under every variant, probed on one engine,
one model in memory at a time, each run reused from or stored in the result cache."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.figures import FULL, Outputs
from ..attacks import is_attack
from ..config import AuditConfig
from ..engines import ENGINES
from ..errors import RuntimeFailure
from ..inputs.calibration import CalibrationSet
from ..inputs.data import ForgetData
from ..inputs.hub import ResolvedRepo, fingerprint_folder
from ..inputs.models import LoadedModel, describe_tokenizer, load_model, offloaded, restorable, restore_weights
from ..probes.base import ProbeOutput
from ..probes.registry import probes_for
from ..quantize import Quantizer
from ..quantize.base import library_failures
from ..report.names import variant_name
from ..report.record import VariantRun
from ..support.home import default_dir
from ..support.memory import release_freed
from .cache import CachedRun, ResultCache, texts_digest
from .environment import reproducibility_key
from .planning import Plan
from .reporter import Reporter
from .scratch import compared_after, saved_checkpoint


@dataclass
class Runs:
    """Phase three: every (model, variant) run, computed or reused from the cache."""

    outputs: Outputs
    runs: list[VariantRun]
    models: dict[str, dict[str, Any]]
    truncated: dict[str, int]
    reused: list[str]
    computed: list[str]
    engine_stats: dict[str, Any]
    rejected: dict[str, str]
    """``role/variant`` -> why its cache entry was not trusted (checksum mismatch, truncated): recomputed."""
    cache_dir: str | None


def run_probes(model: Any, tokenizer: Any, data: ForgetData, config: AuditConfig, reporter: Reporter,
               title: str, truncated: dict[str, int], engine_stats: dict[str, Any] | None = None,
               source: Path | None = None, dtype: str = "float32") -> dict[str, ProbeOutput]:
    """Every probe the data and ``config.probes.only`` call for, on one model variant (``config.probes`` is the
    effective probe settings: the spec's ``chat_template`` already folded in)."""
    settings = config.probes
    advance = reporter.task(title, sum(info.count(data) for info in probes_for(data, settings.only)))
    extra: dict[str, Any] = {}
    if settings.engine == "vllm":  # vLLM loads the variant's weights from a folder
        from ..engines.vllm import VLLMSettings

        extra = {"source": source, "dtype": dtype,
                 "settings": VLLMSettings(settings.tensor_parallel, settings.pipeline_parallel,
                                          settings.gpu_memory_utilization, settings.max_model_len)}
    engine = ENGINES[settings.engine](model, tokenizer, batch_size=settings.batch_size,
                                      sample_temperature=settings.sample_temperature, seed=settings.seed, **extra)
    try:
        outputs = {info.name: info.run(engine, data, settings, advance) for info in probes_for(data, settings.only)}
        for key, count in engine.truncated.items():
            truncated[key] += count
        if engine_stats is not None:
            engine_stats[title] = engine.describe()
        return outputs
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def _variant_model(quantizer: Quantizer, role: str, repo: ResolvedRepo, loaded: LoadedModel,
                   calibration: CalibrationSet | None, config: AuditConfig, reporter: Reporter,
                   scratch: Path | None) -> tuple[Any, Any]:
    """The model under ``quantizer`` as its library builds it (while loading, from a published repo, calibrated
    from the folder, or in place on the loaded copy or a copy of it), and the library's result (settings, proof)."""
    if getattr(quantizer, "changes_weights", True) is False:  # the icl attack: the model as loaded
        return loaded.model, quantizer.attack(loaded.model, loaded.tokenizer, config.probes.seed)
    if quantizer.stage == "load":  # the library quantizes while loading, as users run it
        model = load_model(repo, device=config.device, dtype=loaded.dtype, device_map=config.device_map,
                           trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                           tokenizer=loaded.tokenizer, quantization_config=quantizer.load_config()).model
    elif quantizer.stage == "published":  # a published checkpoint, loaded as its users load it
        return quantizer.load(device=config.device, tokenizer=loaded.tokenizer,
                              trust_remote_code=config.trust_remote_code)
    elif quantizer.stage == "calibrate":  # the library builds it from the folder, calibrating
        reporter.note(f"calibrating {variant_name(quantizer.label)} on {role} ({calibration.source} text)")
        return quantizer.quantize(repo.path, loaded.tokenizer, calibration, device=config.device,
                                  trust_remote_code=config.trust_remote_code, run_dtype=loaded.dtype, workdir=scratch,
                                  save_to=None if scratch is None else saved_checkpoint(scratch, role, quantizer.label))
    elif restorable(loaded.model, repo.path):  # in place on the loaded copy, restored from disk afterwards
        model = loaded.model
    elif offloaded(loaded.model):
        raise RuntimeFailure(f"{quantizer.label} quantizes weights in memory, but --device-map auto offloaded "
                             f"some of {repo.reference}'s weights to CPU or disk",
                             "test bnb:nf4/bnb:int8 (quantized while loading) on this model, or use devices "
                             "that hold it whole")
    else:
        model = copy.deepcopy(loaded.model)
    if is_attack(quantizer):  # the tamper battery: trained or edited in place, seeded
        return model, quantizer.attack(model, loaded.tokenizer, config.probes.seed)
    kept: dict[str, Any] = {}  # GGUF: its files in the scratch folder, k-quants' kept to compare
    if getattr(quantizer, "writes_scratch", False) and scratch is not None:
        kept["workdir"] = scratch
        if compared_after(quantizer):
            kept["save_to"] = saved_checkpoint(scratch, role, quantizer.label)
    apply_role = getattr(quantizer, "apply_role", None)  # a published file: the unlearned model's own
    return model, apply_role(role, model, **kept) if apply_role is not None else quantizer.apply(model, **kept)


def compute_run(quantizer: Quantizer | None, role: str, repo: ResolvedRepo, loaded: LoadedModel, data: ForgetData,
                calibration: CalibrationSet | None, config: AuditConfig, reporter: Reporter,
                engine_stats: dict[str, Any], scratch: Path | None = None) -> CachedRun:
    """Build one variant of a loaded model and run every probe on it (a calibrated variant's checkpoint is
    kept under ``scratch`` for the diagnostic's after-the-fact comparison)."""
    t = time.time()
    model, settings, proof = loaded.model, None, None
    if quantizer is not None:
        with library_failures(quantizer.label, None):  # a library that cannot take a shape: one line
            model, result = _variant_model(quantizer, role, repo, loaded, calibration, config, reporter, scratch)
            settings, proof = result.settings, result.proof.as_dict()
    label = FULL if quantizer is None else quantizer.label
    title = f"{role} · {variant_name(label)}"
    quantized_at = time.time()
    truncated = {"generate": 0, "score": 0}
    source = repo.path
    if config.probes.engine == "vllm" and quantizer is not None:  # vLLM serves the variant from a folder
        source = saved_checkpoint(scratch / "served", role, label)  # apart from the checkpoints kept to compare
        model.save_pretrained(source)
    prompted = getattr(quantizer, "probe_data", None)  # the icl attack (alone or chained): other prompts
    data = (prompted() if prompted is not None else None) or data
    try:
        with library_failures(label, model) if quantizer is not None else contextlib.nullcontext():
            probes = run_probes(model, loaded.tokenizer, data, config, reporter, title,
                                truncated, engine_stats, source=source, dtype=loaded.dtype)
        probed_at = time.time()
    finally:
        if model is loaded.model and quantizer is not None and getattr(quantizer, "changes_weights", True):
            restore_weights(loaded.model, repo.path)
        if source != repo.path:
            shutil.rmtree(source, ignore_errors=True)
    if title in engine_stats:  # where the run's time went (execution record: volatile, not cached)
        engine_stats[title].update({"quantize_seconds": round(quantized_at - t, 2),
                                    "probe_seconds": round(probed_at - quantized_at, 2),
                                    "restore_seconds": round(time.time() - probed_at, 2)})
    return CachedRun(probes=probes, settings=settings, proof=proof, truncated=truncated,
                     seconds=round(time.time() - t, 2), n_parameters=loaded.n_parameters)


def _label(quantizer: Quantizer | None) -> str:
    return FULL if quantizer is None else quantizer.label


def _cache_keys(plan: Plan, role: str, cache: ResultCache, shared: dict[str, Any], seed: int) -> dict[str, str]:
    """variant label -> the result cache's key of this model's run under it (an attack's with the seed it trains
    with, which the probe settings leave out unless sampling)."""
    repo, tokenizer = plan.repos[role], plan.tokenizers[role]
    model_id = {"commit": repo.commit} if repo.commit else fingerprint_folder(repo.path)
    if tokenizer.repo.path != repo.path:
        model_id = {**model_id, "tokenizer": tokenizer.repo.commit or str(tokenizer.repo.path)}
    keys = {}
    for quantizer in [None, *plan.quantizers]:
        settings = None if quantizer is None else quantizer.settings()
        if quantizer is not None and quantizer.stage == "calibrate":
            settings = {**settings, "calibration": plan.calibration.describe()}
        if is_attack(quantizer):
            settings = {**settings, "seed": seed}
        keys[_label(quantizer)] = cache.key({"model": model_id, "variant": _label(quantizer), "settings": settings,
                                             **shared})
    return keys


def _model_record(plan: Plan, role: str, loaded: LoadedModel | None, full_run: CachedRun | None,
                  dtype: str) -> dict[str, Any]:
    """What the record says of one model: its repo (an adapter's own, the merge beside it), how it was found,
    its size and dtype, its tokenizer."""
    repo, tokenizer = plan.repos[role], plan.tokenizers[role]
    n_parameters = loaded.n_parameters if loaded is not None else (full_run.n_parameters if full_run else None)
    adapter = plan.adapter if role == "unlearned" else None
    record = {"repo": adapter.adapter.as_dict() if adapter is not None else repo.as_dict(),
              "found_by": plan.found_by[role], "n_parameters": n_parameters, "dtype": dtype,
              "tokenizer": {**tokenizer.as_dict(), **describe_tokenizer(tokenizer.tokenizer, tokenizer.repo.path,
                                                                        plan.data.calibration_texts()[:20])}}
    if adapter is not None:
        record["adapter"] = adapter.as_dict()
    return record


def _role_runs(plan: Plan, role: str, config: AuditConfig, reporter: Reporter, cache: ResultCache,
               keys: dict[str, str], cached: dict[str, CachedRun], loaded: LoadedModel | None,
               result: Runs) -> dict[str, CachedRun]:
    """One model's runs: full precision and in-place variants first, on the loaded copy; then that copy is
    dropped before a library loads or builds its own quantized model (one model in memory at a time)."""
    finished: dict[str, CachedRun] = {}
    for quantizer in sorted([None, *plan.quantizers], key=lambda q: 0 if q is None else 1 if q.stage == "weights" else 2):
        label = _label(quantizer)
        run = cached.get(label)
        if run is None and quantizer is not None and quantizer.stage == "published" and role != "unlearned":
            # the publisher's quantization cannot be redone on this model: its full-precision results
            finished[label] = dataclasses.replace(finished[FULL], settings=quantizer.settings(), proof=None,
                                                  seconds=0.0)
            continue
        if run is None:
            if quantizer is not None and quantizer.stage != "weights" and loaded.model is not None:
                loaded.model = None
                release_freed()
            run = compute_run(quantizer, role, plan.repos[role], loaded, plan.data, plan.calibration, config,
                              reporter, result.engine_stats, plan.scratch)
            cache.store(keys[label], run)
            result.computed.append(f"{role}/{label}")
        else:
            result.reused.append(f"{role}/{label}")
        finished[label] = run
    return finished


def _load(plan: Plan, role: str, config: AuditConfig, reporter: Reporter, dtype: str) -> LoadedModel:
    repo, tokenizer = plan.repos[role], plan.tokenizers[role]
    reporter.note(f"loading {role} model {repo.reference}")
    started = time.time()
    loaded = load_model(repo, device=config.device, dtype=dtype, device_map=config.device_map,
                        trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                        tokenizer=tokenizer.tokenizer)
    plan.timings[f"load_{role}"] = round(time.time() - started, 2)
    return loaded


def run_all(plan: Plan, config: AuditConfig, reporter: Reporter) -> Runs:
    """Phase three: every model at full precision and under every variant (the reference models under the same
    attack too), one model in memory at a time, through the result cache."""
    cache = ResultCache(None if not config.cache_results else (config.results_dir or default_dir()))
    dtype = config.resolved_dtype
    shared = {"probes": config.probes.cache_key(), "dtype": dtype, "device": config.device.split(":")[0],
              "probes_run": [info.name for info in probes_for(plan.data, config.probes.only)],
              "data": texts_digest(plan.data.texts()), **reproducibility_key(config, dtype)}
    result = Runs(outputs={}, runs=[], models={}, truncated={"generate": 0, "score": 0}, reused=[], computed=[],
                  engine_stats={}, rejected={}, cache_dir=None if cache.root is None else str(cache.root))
    for role in plan.repos:
        keys = _cache_keys(plan, role, cache, shared, config.probes.seed)
        checked = {label: cache.check(key) for label, key in keys.items()}
        cached = {label: hit for label, (hit, _) in checked.items() if hit is not None}
        for label, (_, why) in checked.items():
            if why is not None:
                result.rejected[f"{role}/{label}"] = why
                reporter.note(f"{role}/{label}: cache entry not trusted ({why}); recomputing it")
        derived = {q.label for q in plan.quantizers if q.stage == "published" and role != "unlearned"}
        loaded = None
        if any(label not in cached and label not in derived for label in keys):
            loaded = _load(plan, role, config, reporter, dtype)
        if cached:
            reporter.note(f"{role}: reusing {len(cached)} of {len(keys)} cached results")
        result.models[role] = _model_record(plan, role, loaded, cached.get(FULL), dtype)
        finished = _role_runs(plan, role, config, reporter, cache, keys, cached, loaded, result)
        for quantizer in [None, *plan.quantizers]:  # the record keeps the order the variants were asked for
            run = finished[_label(quantizer)]
            for key, count in run.truncated.items():
                result.truncated[key] += count
            result.outputs.setdefault(role, {})[_label(quantizer)] = run.probes
            result.runs.append(VariantRun(role=role, variant=_label(quantizer), settings=run.settings, proof=run.proof,
                                          metrics={}, details={m: o.details for m, o in run.probes.items()},
                                          items={m: [i.as_dict() for i in o.items] for m, o in run.probes.items()},
                                          seconds=run.seconds))
        del loaded
        release_freed()
    return result
