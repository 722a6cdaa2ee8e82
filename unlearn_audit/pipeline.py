"""Orchestration: resolve -> load -> quantize -> probe -> analyse -> decide -> record.

Data flows one way. The library entry point is :func:`audit`, which returns an
:class:`~unlearn_audit.report.record.AuditReport`; :func:`write_reports` renders and writes it.
"""

from __future__ import annotations

import copy
import gc
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .analysis import FULL, Outputs, Reference, analyse
from .config import AuditConfig
from .data import ForgetData, load_forget_data
from .errors import InputError, RuntimeFailure, UsageError
from .hub import ResolvedRepo, card_metadata, base_model_of, resolve
from .cache import CachedRun, ResultCache, default_dir, fingerprint_folder, texts_digest
from .models import (LoadedModel, check_files, check_same_tokenizer, load_model, load_tokenizer, restorable,
                     restore_weights)
from .probes import muse
from .probes.base import ProbeOutput
from .probes.engine import ENGINES
from .calibration import FORGET, CalibrationSet, calibration_set
from .quantize import BnbQuantizer, Quantizer, parse_variants
from .quantize.bnb import quiet_bnb_warnings
from .resources import peak_accelerator_mb, peak_rss_mb
from .report.record import AuditReport, VariantRun, write_atomic
from .report.render import RENDERERS, variant_name
from .spec import PRESETS, SPEC_FILENAME, ForgetSpec, load_spec_file, parse_spec, preset_spec, spec_for_dataset
from .verdict import decide
from .weights import weight_diff

PACKAGES = ("torch", "transformers", "huggingface_hub", "safetensors", "tokenizers", "numpy", "rouge-score",
            "scikit-learn", "bitsandbytes")


class Reporter(Protocol):
    """Where progress goes (the CLI shows rich progress bars on stderr; the library default is silent)."""

    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def note(self, message: str) -> None: ...


class SilentReporter:
    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None

    def note(self, message: str) -> None:
        pass


def find_spec(config: AuditConfig, unlearned: ResolvedRepo, notes: list[str]) -> tuple[ForgetSpec, str]:
    """The forget-set spec and where it came from. Explicit flags win over what the repo carries."""
    repo_file = unlearned.path / SPEC_FILENAME
    card_block = card_metadata(unlearned.path).get("unlearn_audit")
    in_repo = repo_file.is_file() or card_block is not None
    if config.spec_path is not None:
        spec, source = load_spec_file(config.spec_path), f"--spec {config.spec_path}"
    elif config.forget is not None:
        if config.forget in PRESETS:
            spec, source = preset_spec(config.forget), f"--forget preset '{config.forget}'"
        else:
            spec, source = spec_for_dataset(config.forget), f"--forget dataset '{config.forget}'"
    elif repo_file.is_file():
        return load_spec_file(repo_file), f"{SPEC_FILENAME} in {unlearned.reference}"
    elif card_block is not None:
        return parse_spec(card_block, f"the model card of {unlearned.reference}"), \
            f"model card metadata of {unlearned.reference}"
    else:
        raise UsageError(f"no forget-set spec: {unlearned.reference} carries no {SPEC_FILENAME} and no "
                         "unlearn_audit card block",
                         f"pass --forget {' or --forget '.join(PRESETS)}, --forget DATASET, or --spec FILE")
    if in_repo:
        notes.append(f"{unlearned.reference} carries its own forget-set spec; {source} was used instead.")
    return spec, source


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def run_probes(model: Any, tokenizer: Any, data: ForgetData, config: AuditConfig, reporter: Reporter,
               title: str, truncated: dict[str, int], engine_stats: dict[str, Any] | None = None
               ) -> dict[str, ProbeOutput]:
    """VerbMem, KnowMem (forget and retain) and PrivLeak for one model variant."""
    settings = config.probes
    total = (len(data.verbmem_prompts) + len(data.knowmem_forget.questions) + len(data.knowmem_retain.questions)
             + len(data.privleak_forget) + len(data.privleak_holdout))
    advance = reporter.task(title, total)
    engine = ENGINES[settings.engine](model, tokenizer, batch_size=settings.batch_size,
                                      sample_temperature=settings.sample_temperature, seed=settings.seed)
    stem = settings.rouge_stemmer
    outputs = {
        "verbmem_f": muse.verbmem(engine, data.verbmem_prompts, data.verbmem_refs,
                                  settings.verbmem_max_new_tokens, advance, stemmer=stem),
        "knowmem_f": muse.knowmem(engine, data.knowmem_forget, "knowmem_f", settings.knowmem_max_new_tokens,
                                  advance, stemmer=stem),
        "knowmem_r": muse.knowmem(engine, data.knowmem_retain, "knowmem_r", settings.knowmem_max_new_tokens,
                                  advance, stemmer=stem),
        "privleak": muse.privleak(engine, data.privleak_forget, data.privleak_holdout, settings.minkprob_k, advance,
                                  at_least_one=settings.mink_at_least_one),
    }
    for key, count in engine.truncated.items():
        truncated[key] += count
    if engine_stats is not None:
        engine_stats[title] = {"batch_size": engine.batch_size, "oom_splits": engine.oom_splits}
    return outputs


def _compute_run(quantizer: Quantizer | None, role: str, repo: ResolvedRepo, loaded: LoadedModel, data: ForgetData,
                 calibration: CalibrationSet | None, config: AuditConfig, reporter: Reporter,
                 engine_stats: dict[str, Any]) -> CachedRun:
    """Build one variant of a loaded model and run every probe on it."""
    t = time.time()
    model, settings, proof = loaded.model, None, None
    if quantizer is not None:
        if quantizer.stage == "load":  # the library quantizes while loading, as users run it
            model = load_model(repo, device=config.device, dtype=loaded.dtype, device_map=config.device_map,
                               trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                               tokenizer=loaded.tokenizer, quantization_config=quantizer.load_config()).model
        elif quantizer.stage == "calibrate":  # the library builds it from the folder, calibrating
            reporter.note(f"calibrating {variant_name(quantizer.label)} on {role} ({calibration.source} text)")
            model, result = quantizer.quantize(repo.path, loaded.tokenizer, calibration, device=config.device,
                                               trust_remote_code=config.trust_remote_code)
        elif restorable(loaded.model, repo.path):  # in place on the loaded copy, restored from disk afterwards
            model = loaded.model
        else:
            model = copy.deepcopy(loaded.model)
        if quantizer.stage != "calibrate":
            result = quantizer.apply(model)
        settings, proof = result.settings, result.proof.as_dict()
    label = FULL if quantizer is None else quantizer.label
    truncated = {"generate": 0, "score": 0}
    try:
        probes = run_probes(model, loaded.tokenizer, data, config, reporter, f"{role} · {variant_name(label)}",
                            truncated, engine_stats)
    finally:
        if model is loaded.model and quantizer is not None:
            restore_weights(loaded.model, repo.path)
    return CachedRun(probes=probes, settings=settings, proof=proof, truncated=truncated,
                     seconds=round(time.time() - t, 2), n_parameters=loaded.n_parameters)


def audit(config: AuditConfig, reporter: Reporter | None = None) -> AuditReport:
    """Run one audit end to end and return its record (nothing is written; see :func:`write_reports`)."""
    reporter = reporter or SilentReporter()
    started = time.time()
    quantizers: list[Quantizer] = parse_variants(config.quant)
    if any(isinstance(q, BnbQuantizer) for q in quantizers):
        quiet_bnb_warnings()
    for quantizer in quantizers:  # a missing library is found before any work, with its install command
        quantizer.require()
    notes: list[str] = []
    common = {"cache_dir": config.cache_dir, "offline": config.offline}

    unlearned_repo = resolve(config.model, revision=config.revision, allow_pickle=config.allow_pickle, **common)
    spec, spec_source = find_spec(config, unlearned_repo, notes)
    if config.original:
        original_ref, original_rev, found_by = config.original, config.original_revision, "from --original"
    elif spec.original:
        original_ref, original_rev, found_by = spec.original, spec.original_revision, f"from the spec, {spec_source}"
    else:
        original_ref, original_rev, found_by = base_model_of(unlearned_repo.path), None, "from the model card's base_model"
    if not original_ref:
        raise UsageError(f"cannot tell which model {unlearned_repo.reference} was unlearned from",
                         "pass --original MODEL, or add base_model to its card")
    original_repo = resolve(original_ref, revision=original_rev, allow_pickle=config.allow_pickle, **common)
    retrain_repo = (resolve(spec.retrain, revision=spec.retrain_revision, allow_pickle=config.allow_pickle, **common)
                    if spec.retrain else None)
    dataset_repo = resolve(spec.dataset, kind="dataset", revision=spec.dataset_revision, **common)
    data = load_forget_data(dataset_repo.path, spec, config.probes.max_items)
    calibration = None
    if any(q.stage == "calibrate" for q in quantizers):
        calibration = calibration_set(config.calibration, data.privleak_forget, config.calibration_tokens)
        if calibration.source == FORGET:
            notes.append("GPTQ/AWQ were calibrated on the forget set itself (--calibration forget), "
                         "a stronger attack than a user's generic calibration.")
    if config.probes.max_items is not None:
        notes.append(f"Only the first {config.probes.max_items} items of each split were probed (--max-items).")

    if retrain_repo is not None:
        reference = Reference("retrain", None, f"the retrained model {retrain_repo.reference}, probed in this audit")
    elif spec.privleak.reference_auc is not None:
        reference = Reference("published", spec.privleak.reference_auc,
                              f"the published AUC {spec.privleak.reference_auc} of a retrained model ({spec_source}); "
                              "VerbMem/KnowMem residuals are measured above 0")
    else:
        reference = Reference("default", 0.5, "AUC 0.5, a model that never saw the forget set (no retrained model or "
                              "published AUC was given); VerbMem/KnowMem residuals are measured above 0")

    roles: list[tuple[str, ResolvedRepo, str]] = [("unlearned", unlearned_repo, "the audited model"),
                                                  ("original", original_repo, found_by)]
    if retrain_repo is not None:
        roles.append(("retrain", retrain_repo, f"from the spec, {spec_source}"))
    for _, repo, _ in roles:  # refuse unsafe or incompatible checkpoints before any probing
        check_files(repo.path, trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                    label=repo.reference)
    tokenizers = {role: load_tokenizer(repo, trust_remote_code=config.trust_remote_code) for role, repo, _ in roles}
    for role, repo, _ in roles[1:]:
        check_same_tokenizer(unlearned_repo.reference, tokenizers["unlearned"], repo.reference, tokenizers[role])

    outputs: Outputs = {}
    runs: list[VariantRun] = []
    models: dict[str, dict[str, Any]] = {}
    truncated = {"generate": 0, "score": 0}
    cache = ResultCache(None if not config.cache_results else (config.results_dir or default_dir()))
    dtype = config.resolved_dtype
    shared_key = {"probes": config.probes.cache_key(), "dtype": dtype, "device": config.device.split(":")[0],
                  "data": texts_digest(data.texts())}
    reused, computed, engine_stats = [], [], {}
    for role, repo, how in roles:
        model_id = {"commit": repo.commit} if repo.commit else fingerprint_folder(repo.path)
        variants = [None, *quantizers] if role != "retrain" else [None]
        keys, cached = {}, {}
        for quantizer in variants:
            label = FULL if quantizer is None else quantizer.label
            settings = None if quantizer is None else quantizer.settings()
            if quantizer is not None and quantizer.stage == "calibrate":
                settings = {**settings, "calibration": calibration.describe()}
            keys[label] = cache.key({"model": model_id, "variant": label, "settings": settings, **shared_key})
            hit = cache.load(keys[label])
            if hit is not None:
                cached[label] = hit
        loaded = None
        if len(cached) < len(variants):
            reporter.note(f"loading {role} model {repo.reference}")
            loaded = load_model(repo, device=config.device, dtype=dtype, device_map=config.device_map,
                                trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                                tokenizer=tokenizers[role])
        if cached:
            reporter.note(f"{role}: reusing {len(cached)} of {len(variants)} cached results")
        full_run = cached.get(FULL)
        n_parameters = loaded.n_parameters if loaded is not None else (full_run.n_parameters if full_run else None)
        models[role] = {"repo": repo.as_dict(), "found_by": how, "n_parameters": n_parameters, "dtype": dtype}
        # Full precision and in-place variants first, on the loaded copy; then that copy is dropped before
        # a library loads or builds its own quantized model: one model in memory at a time.
        finished: dict[str, CachedRun] = {}
        for quantizer in sorted(variants, key=lambda q: 0 if q is None else 1 if q.stage == "weights" else 2):
            label = FULL if quantizer is None else quantizer.label
            run = cached.get(label)
            if run is None:
                if quantizer is not None and quantizer.stage != "weights" and loaded.model is not None:
                    loaded.model = None
                    gc.collect()
                run = _compute_run(quantizer, role, repo, loaded, data, calibration, config, reporter, engine_stats)
                cache.store(keys[label], run)
                computed.append(f"{role}/{label}")
            else:
                reused.append(f"{role}/{label}")
            finished[label] = run
        for quantizer in variants:  # the record keeps the order the variants were asked for
            label = FULL if quantizer is None else quantizer.label
            run = finished[label]
            for key, count in run.truncated.items():
                truncated[key] += count
            outputs.setdefault(role, {})[label] = run.probes
            runs.append(VariantRun(role=role, variant=label, settings=run.settings, proof=run.proof, metrics={},
                                   details={m: o.details for m, o in run.probes.items()},
                                   items={m: [i.as_dict() for i in o.items] for m, o in run.probes.items()},
                                   seconds=run.seconds))
        del loaded
        gc.collect()

    diagnostic = None
    try:
        reporter.note("comparing weights under each quantizer's grid")
        diagnostic = weight_diff(unlearned_repo.path, original_repo.path, quantizers,
                                 labels=(unlearned_repo.reference, original_repo.reference)).as_dict()
    except InputError as exc:
        notes.append(f"No weight-level diagnostic: {exc.message}.")
    analysis = analyse(outputs, reference, min_gap=config.thresholds.min_gap,
                       resamples=config.probes.bootstrap_resamples, seed=config.probes.seed)
    labels = [q.label for q in quantizers]
    verdict = decide(analysis, config.thresholds, {label: variant_name(label) for label in labels})
    for run in runs:
        run.metrics = {m: i.as_dict() for m, i in analysis.values[run.role][run.variant].items()}
    return AuditReport(
        tool_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=config.command,
        config=config.to_record(),
        spec=spec.model_dump(),
        spec_source=spec_source,
        models=models,
        dataset=dataset_repo.as_dict(),
        data_counts=data.counts(),
        reference={"source": reference.source, "privleak_auc": reference.privleak_auc,
                   "description": reference.description,
                   "values": {m: i.as_dict() for m, i in analysis.reference.items()}},
        variants=labels,
        runs=runs,
        residuals=[s.as_dict() for s in analysis.residuals],
        recoveries=[s.as_dict() for s in analysis.recoveries],
        verdict=verdict.as_dict(),
        thresholds={**config.to_record()["thresholds"]},
        environment={"python": platform.python_version(), "platform": platform.platform(),
                     "packages": _versions(), "argv0": Path(sys.argv[0]).name},
        truncated=truncated,
        duration_seconds=round(time.time() - started, 1),
        execution={"device": config.device, "device_map": config.device_map, "dtype": dtype,
                   "engine": config.probes.engine, "batch_size": config.probes.batch_size or "auto",
                   "batches": engine_stats, "peak_rss_mb": peak_rss_mb(),
                   "peak_accelerator_mb": peak_accelerator_mb(),
                   "cache": {"dir": None if cache.root is None else str(cache.root), "reused": reused,
                             "computed": computed}},
        notes=notes,
        weight_diff=diagnostic,
    )


def prepare_out_dir(out_dir: Path) -> None:
    """Fail before any work if the report folder cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".unlearn-audit-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RuntimeFailure(f"cannot write reports into {out_dir}: {exc.strerror}",
                             "pass a writable folder with --out") from None


def write_reports(report: AuditReport, out_dir: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """Render ``report`` in each format and write the files atomically; the JSON record goes last."""
    record = report.to_dict()
    rendered = {}
    for fmt in sorted(formats, key=lambda f: f == "json"):
        if fmt not in RENDERERS:
            raise InputError(f"unknown report format '{fmt}'", f"use some of {', '.join(RENDERERS)}")
        name, render = RENDERERS[fmt]
        rendered[fmt] = (out_dir / name, render(record))  # render everything before writing anything
    prepare_out_dir(out_dir)
    for fmt, (path, text) in rendered.items():
        write_atomic(path, text)
    return {fmt: path for fmt, (path, _) in rendered.items()}
