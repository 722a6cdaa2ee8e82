"""Orchestration: resolve -> load -> quantize -> probe -> analyse -> decide -> record.

Data flows one way. The library entry point is :func:`audit`, which returns an
:class:`~unlearn_audit.report.record.AuditReport`; :func:`write_reports` renders and writes it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import platform
import shutil
import tempfile
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .analysis import FULL, Outputs, Reference, analyse
from .config import AuditConfig, resolve_device
from .data import (ForgetData, card_patterns, cut_like_verbmem, dataset_patterns, load_forget_data,
                   utility_patterns)
from .errors import InputError, RuntimeFailure, UsageError
from .hub import (METADATA_FILES, ResolvedRepo, base_model_of, card_metadata, fetch_weights, resolve, stale_weight_files,
                  without_stale_weights)
from .adapters import MergedAdapter, adapter_base, check_adapter_files, is_adapter, merge_adapter
from .cache import CachedRun, ResultCache, default_dir, fingerprint_folder, home, texts_digest
from .memory import release_freed
from .models import (LoadedModel, check_files, check_same_tokenizer, describe_tokenizer, load_model, offloaded,
                     restorable, restore_weights)
from .tokenization import TokenizerChoice, choose_tokenizers
from .probes.base import ProbeOutput
from .probes.engine import ENGINES
from .probes.registry import probes_for
from .calibration import FORGET, CalibrationSet, calibration_set, shortfall
from .published import PublishedCheckpoint, PublishedEntry, PublishedGGUF, find_published
from .quantize import BnbQuantizer, Quantizer, parse_variants
from .quantize.base import library_failures
from .quantize.bnb import quiet_bnb_warnings
from .resources import peak_accelerator_mb, peak_rss_mb
from .report.record import AuditReport, VariantRun, write_atomic
from .report.render import RENDERERS, variant_name
from .spec import (PRESET_CHOICES, PRESETS, SPEC_FILENAME, ForgetSpec, load_spec_file, merged, parse_spec, preset_choices,
                   preset_name, preset_spec, spec_for_dataset, spec_mapping as _spec_mapping)
from .verdict import decide
from .weights import calibrated_diff, linear_shapes, parameter_count, tensor_shapes, weight_diff

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
    """The forget-set spec and where it came from. Explicit flags win over what the repo carries, except that a
    benchmark preset (``--forget tofu:forget05``, ``wmdp-cyber``) given for a model whose own spec describes that
    benchmark picks its split or domain inside that spec (the publisher's spec says where the data and models lie)."""
    repo_file = unlearned.path / SPEC_FILENAME
    card_block = card_metadata(unlearned.path).get("unlearn_audit")
    in_repo = repo_file.is_file() or card_block is not None

    def own() -> tuple[dict[str, Any], str, str]:
        if repo_file.is_file():
            return (_spec_mapping(repo_file), str(repo_file), f"{SPEC_FILENAME} in {unlearned.reference}")
        return card_block, f"the model card of {unlearned.reference}", f"model card metadata of {unlearned.reference}"

    if config.spec_path is not None:
        spec, source = load_spec_file(config.spec_path), f"--spec {config.spec_path}"
    elif config.forget is not None:
        name = preset_name(config.forget)
        choices = preset_choices(config.forget)
        if choices and in_repo:
            mapping, origin, where = own()
            if isinstance(mapping, dict) and mapping.get("benchmark") == choices["benchmark"]:
                return (parse_spec(merged(mapping, choices), origin),
                        f"{where}, with --forget {config.forget} choosing inside it")
        if name is not None:
            spec, source = preset_spec(config.forget), f"--forget preset '{config.forget}'"
        else:
            spec, source = spec_for_dataset(config.forget), f"--forget dataset '{config.forget}'"
    elif in_repo:
        mapping, origin, where = own()
        return parse_spec(mapping, origin), where
    else:
        raise UsageError(f"no forget-set spec: {unlearned.reference} carries no {SPEC_FILENAME} and no "
                         "unlearn_audit card block",
                         f"pass --forget {' or --forget '.join(PRESET_CHOICES)}, --forget DATASET, or --spec FILE")
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
               title: str, truncated: dict[str, int], engine_stats: dict[str, Any] | None = None,
               source: Path | None = None, dtype: str = "float32") -> dict[str, ProbeOutput]:
    """VerbMem, KnowMem (forget and retain) and PrivLeak for one model variant (``config.probes`` is the
    effective probe settings: the spec's ``chat_template`` already folded in)."""
    settings = config.probes
    advance = reporter.task(title, sum(info.count(data) for info in probes_for(data, settings.only)))
    extra: dict[str, Any] = {}
    if settings.engine == "vllm":  # vLLM loads the variant's weights from a folder
        from .probes.vllm_engine import VLLMSettings

        extra = {"source": source, "dtype": dtype,
                 "settings": VLLMSettings(settings.tensor_parallel, settings.pipeline_parallel,
                                          settings.gpu_memory_utilization, settings.max_model_len)}
    engine = ENGINES[settings.engine](model, tokenizer, batch_size=settings.batch_size,
                                      sample_temperature=settings.sample_temperature, seed=settings.seed, **extra)
    try:
        return _probe_all(engine, data, config, advance, truncated, engine_stats, title)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def _probe_all(engine: Any, data: ForgetData, config: AuditConfig, advance: Any, truncated: dict[str, int],
               engine_stats: dict[str, Any] | None, title: str) -> dict[str, ProbeOutput]:
    outputs = {info.name: info.run(engine, data, config.probes, advance)
               for info in probes_for(data, config.probes.only)}
    for key, count in engine.truncated.items():
        truncated[key] += count
    if engine_stats is not None:
        engine_stats[title] = engine.describe()
    return outputs


def _compute_run(quantizer: Quantizer | None, role: str, repo: ResolvedRepo, loaded: LoadedModel, data: ForgetData,
                 calibration: CalibrationSet | None, config: AuditConfig, reporter: Reporter,
                 engine_stats: dict[str, Any], scratch: Path | None = None) -> CachedRun:
    """Build one variant of a loaded model and run every probe on it (a calibrated variant's checkpoint is
    kept under ``scratch`` for the diagnostic's after-the-fact comparison)."""
    t = time.time()
    model, settings, proof = loaded.model, None, None
    if quantizer is not None:
        with library_failures(quantizer.label, None):  # a library that cannot take a shape: one line
            if quantizer.stage == "load":  # the library quantizes while loading, as users run it
                model = load_model(repo, device=config.device, dtype=loaded.dtype, device_map=config.device_map,
                                   trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                                   tokenizer=loaded.tokenizer, quantization_config=quantizer.load_config()).model
            elif quantizer.stage == "published":  # a published checkpoint, loaded as its users load it
                model, result = quantizer.load(device=config.device, tokenizer=loaded.tokenizer,
                                               trust_remote_code=config.trust_remote_code)
            elif quantizer.stage == "calibrate":  # the library builds it from the folder, calibrating
                reporter.note(f"calibrating {variant_name(quantizer.label)} on {role} ({calibration.source} text)")
                model, result = quantizer.quantize(repo.path, loaded.tokenizer, calibration, device=config.device,
                                                   trust_remote_code=config.trust_remote_code, run_dtype=loaded.dtype,
                                                   workdir=scratch,
                                                   save_to=None if scratch is None else saved_checkpoint(
                                                       scratch, role, quantizer.label))
            elif restorable(loaded.model, repo.path):  # in place on the loaded copy, restored from disk afterwards
                model = loaded.model
            elif offloaded(loaded.model):
                raise RuntimeFailure(f"{quantizer.label} quantizes weights in memory, but --device-map auto offloaded "
                                     f"some of {repo.reference}'s weights to CPU or disk",
                                     "test bnb:nf4/bnb:int8 (quantized while loading) on this model, or use devices "
                                     "that hold it whole")
            else:
                model = copy.deepcopy(loaded.model)
            if quantizer.stage not in ("calibrate", "published"):
                kept: dict[str, Any] = {}  # GGUF: its files in the scratch folder, k-quants' kept to compare
                if getattr(quantizer, "writes_scratch", False) and scratch is not None:
                    kept["workdir"] = scratch
                    if compared_after(quantizer):
                        kept["save_to"] = saved_checkpoint(scratch, role, quantizer.label)
                apply_role = getattr(quantizer, "apply_role", None)  # a published file: the unlearned model's own
                result = apply_role(role, model, **kept) if apply_role is not None else quantizer.apply(model, **kept)
            settings, proof = result.settings, result.proof.as_dict()
    label = FULL if quantizer is None else quantizer.label
    title = f"{role} · {variant_name(label)}"
    quantized_at = time.time()
    truncated = {"generate": 0, "score": 0}
    source = repo.path
    if config.probes.engine == "vllm" and quantizer is not None:  # vLLM serves the variant from a folder
        source = saved_checkpoint(scratch / "served", role, label)  # apart from the checkpoints kept to compare
        model.save_pretrained(source)
    try:
        with library_failures(label, model) if quantizer is not None else contextlib.nullcontext():
            probes = run_probes(model, loaded.tokenizer, data, config, reporter, title,
                                truncated, engine_stats, source=source, dtype=loaded.dtype)
        probed_at = time.time()
    finally:
        if model is loaded.model and quantizer is not None:
            restore_weights(loaded.model, repo.path)
        if source != repo.path:
            shutil.rmtree(source, ignore_errors=True)
    if title in engine_stats:  # where the run's time went (execution record: volatile, not cached)
        engine_stats[title].update({"quantize_seconds": round(quantized_at - t, 2),
                                    "probe_seconds": round(probed_at - quantized_at, 2),
                                    "restore_seconds": round(time.time() - probed_at, 2)})
    return CachedRun(probes=probes, settings=settings, proof=proof, truncated=truncated,
                     seconds=round(time.time() - t, 2), n_parameters=loaded.n_parameters)


@dataclass
class Plan:
    """Phase one of an audit: everything that can be checked without a single weight file.

    Attributes:
        quantizers: the variants to test, parsed and their libraries found.
        spec, spec_source: the forget-set spec and where it came from.
        repos: role -> the model's folder holding configs, tokenizer, card and spec (weights come in phase two).
        found_by: role -> how that model was chosen.
        dataset: the dataset folder (only the configs the spec needs).
        data: the probed texts, validated (splits, columns, non-empty).
        tokenizers: role -> the tokenizer it is probed with, and why.
        reference: what residuals and the PrivLeak AUC are read against.
        calibration: GPTQ/AWQ calibration text, when a calibrated variant is asked for.
        notes: what the report must say about choices made here.
    """

    quantizers: list[Quantizer]
    spec: ForgetSpec
    spec_source: str
    repos: dict[str, ResolvedRepo]
    found_by: dict[str, str]
    dataset: ResolvedRepo
    data: ForgetData
    tokenizers: dict[str, TokenizerChoice]
    reference: Reference
    calibration: CalibrationSet | None
    notes: list[str] = field(default_factory=list)
    adapter_base: ResolvedRepo | None = None
    """For an adapter checkpoint: the base model it is merged into (phase two merges it)."""
    adapter: MergedAdapter | None = None
    scratch: Path | None = None
    """Working folder of this audit (quantized checkpoints kept for the diagnostic), removed at the end."""
    timings: dict[str, float] = field(default_factory=dict)
    n_parameters: int = 0
    """The unlearned model's parameter count, from its safetensors headers (phase two)."""
    published: list[PublishedEntry] = field(default_factory=list)
    """``--published``: the derivative repos listed and what was done with each."""
    """Seconds per phase (resolve, fetch, weight_diagnostic), for the record's execution block."""


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
    cache_dir: str | None


def _original_of(config: AuditConfig, spec: ForgetSpec, spec_source: str, unlearned: ResolvedRepo,
                 adapter_base_ref: str | None) -> tuple[str, str | None, str]:
    if config.original:
        return config.original, config.original_revision, "from --original"
    if spec.original:
        return spec.original, spec.original_revision, f"from the spec, {spec_source}"
    if adapter_base_ref:
        return adapter_base_ref, None, "the adapter's base model (adapter_config.json)"
    base = base_model_of(unlearned.path)
    if not base:
        raise UsageError(f"cannot tell which model {unlearned.reference} was unlearned from",
                         "pass --original MODEL, or add base_model to its card")
    return base, None, "from the model card's base_model"


REFERENCE_STRENGTH = {
    "retrain": "strongest: a model trained without the forget set",
    "reference": "strong: a model that never saw the forget set (not trained on the retain set either)",
    "published": "weak: a published constant AUC, with the holdout floor for VerbMem",
    "default": "weakest: AUC 0.5, with the holdout floor for VerbMem",
}
"""How much a residual or recovery read against each kind of reference can be trusted (README, Verdict rules)."""


def _reference(spec: ForgetSpec, spec_source: str, repos: dict[str, ResolvedRepo], found_by: dict[str, str]
               ) -> Reference:
    """The strongest reference available: retrain > reference model > holdout floor > constant."""
    if "retrain" in repos:
        return Reference("retrain", None, f"the retrained model {repos['retrain'].reference}, probed in this audit "
                         "at full precision and under every variant")
    if "reference" in repos:
        published = spec.privleak.reference_auc
        return Reference("reference", published, f"{repos['reference'].reference}, a model that never saw the forget "
                         f"set ({found_by['reference']}), probed in this audit at full precision and under every "
                         "variant; weaker than a retrained model, which would also have seen the retain set"
                         + (f"; the PrivLeak score stays normalised by the published AUC {published}, as MUSE "
                            "defines it" if published is not None else ""))
    if spec.benchmark == "tofu":
        return Reference("default", None, "no retained model was named (TOFU's retain90/95/99 model), so residuals are "
                         "measured against a model that never saw the forget set in theory: ROUGE and probability 0, "
                         "truth ratio 1; forget quality needs the retained model")
    if spec.benchmark == "wmdp":
        return Reference("default", None, "no model without the hazardous knowledge was named, so residuals are "
                         "measured above chance (25% accuracy on four choices)")
    floor = "VerbMem residuals are measured above the original's holdout floor, KnowMem residuals above 0"
    pl = spec.privleak
    if pl.reference_auc is not None:
        dtype = f", measured in {pl.reference_auc_dtype}" if pl.reference_auc_dtype else ""
        return Reference("published", pl.reference_auc,
                         f"the published AUC {pl.reference_auc} of a retrained model ({spec_source}{dtype}); {floor}")
    return Reference("default", 0.5, "AUC 0.5, a model that never saw the forget set (no retrained model, reference "
                     f"model or published AUC was given); {floor}")


def _reference_model(config: AuditConfig, spec: ForgetSpec, original: ResolvedRepo, notes: list[str],
                     common: dict[str, Any]) -> tuple[ResolvedRepo, str, bool] | None:
    """Without a retrained model: the spec's ``reference``, else the original's card ``base_model`` (the model it
    was fine-tuned from never saw the forget set). An implicit one that cannot be resolved is noted, not fatal."""
    if spec.reference:
        return resolve(spec.reference, revision=spec.reference_revision, **common), "from the spec's reference", True
    base = base_model_of(original.path)
    if not base or base in (original.reference, config.model):
        return None
    try:
        return resolve(base, **common), "the original's card base_model", False
    except InputError as exc:
        notes.append(f"The original's base model {base} could not be resolved ({exc.message}), so no reference model "
                     "was probed; VerbMem is read against the holdout floor.")
        return None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def plan(config: AuditConfig, reporter: Reporter) -> Plan:
    """Phase one: resolve configs, tokenizers, cards, specs and the needed dataset configs only, and check
    everything that can fail without weights (spec, splits, columns, tokenizers, remote code)."""
    quantizers: list[Quantizer] = parse_variants(config.quant)
    if any(isinstance(q, BnbQuantizer) for q in quantizers):
        quiet_bnb_warnings()
    for quantizer in quantizers:  # a missing library is found before any work, with its install command
        quantizer.require()
    served = [q.label for q in quantizers if q.stage != "weights"]
    if config.probes.engine == "vllm" and served:
        raise UsageError(f"--engine vllm serves full precision and in-place variants (rtn, gguf); not {', '.join(served)}",
                         "run those variants with --engine hf (the default)")
    notes: list[str] = []
    common = {"cache_dir": config.cache_dir, "offline": config.offline, "patterns": METADATA_FILES}
    unlearned = resolve(config.model, revision=config.revision, **common)
    published: list[PublishedEntry] = []
    if config.published:
        if unlearned.repo_id is None:
            raise UsageError(f"--published lists a Hub model's derivatives, and {config.model} is a local folder",
                             "pass the model's Hub id, or drop --published")
        found, published = find_published(unlearned.repo_id, limit=config.published_max,
                                          pattern=config.published_files, cache_dir=config.cache_dir,
                                          offline=bool(config.offline) or _offline())
        for variant in found:
            variant.require()
        quantizers += found
    spec, spec_source = find_spec(config, unlearned, notes)
    base = None
    if is_adapter(unlearned.path):
        base = resolve(adapter_base(unlearned.path, unlearned.reference), **common)
        check_files(base.path, trust_remote_code=config.trust_remote_code, allow_pickle=True, label=base.reference,
                    need_weights=False)
    original_ref, original_rev, original_how = _original_of(config, spec, spec_source, unlearned,
                                                            base.reference if base else None)
    repos = {"unlearned": unlearned, "original": resolve(original_ref, revision=original_rev, **common)}
    found_by = {"unlearned": "the audited model", "original": original_how}
    explicit_reference = False
    if spec.retrain:
        repos["retrain"] = resolve(spec.retrain, revision=spec.retrain_revision, **common)
        found_by["retrain"] = f"from the spec, {spec_source}"
    else:
        chosen = _reference_model(config, spec, repos["original"], notes, common)
        if chosen is not None:
            repos["reference"], found_by["reference"], explicit_reference = chosen
    preset = PRESETS.get(config.forget or "")
    if preset and original_ref.lower() != preset["original"].lower():
        notes.append(f"The original model {original_ref} is not the {preset['name']} preset's "
                     f"{preset['original']}; the preset's published reference AUC belongs to that model's retrained "
                     "twin, so read PrivLeak with care (name a retrained model in a spec to measure it).")
    for role, repo in repos.items():  # remote code is refused before anything else is fetched
        if role == "unlearned" and base is not None:
            continue  # an adapter has no config.json of its own; its base was checked above
        check_files(repo.path, trust_remote_code=config.trust_remote_code, allow_pickle=True, label=repo.reference,
                    need_weights=False)
    dataset = resolve(spec.dataset, kind="dataset", revision=spec.dataset_revision, cache_dir=config.cache_dir,
                      offline=config.offline, patterns=dataset_patterns(spec))
    mapped = card_patterns(dataset.path, spec)  # files the dataset card's configs: mapping names
    if mapped and not all(any(dataset.path.glob(p)) for p in mapped):
        dataset = resolve(spec.dataset, kind="dataset", revision=dataset.commit or spec.dataset_revision,
                          cache_dir=config.cache_dir, offline=config.offline, patterns=dataset_patterns(spec) + mapped)
    utility = None
    if spec.benchmark == "wmdp" and spec.mmlu.configs:
        utility = resolve(spec.mmlu.dataset, kind="dataset", revision=spec.mmlu.dataset_revision,
                          cache_dir=config.cache_dir, offline=config.offline, patterns=utility_patterns(spec)).path
    data = load_forget_data(dataset.path, spec, config.probes.max_items, utility)
    tokenizers = choose_tokenizers(repos, explicit=config.tokenizer, explicit_revision=config.tokenizer_revision,
                                   spec_tokenizer=spec.tokenizer, spec_revision=spec.tokenizer_revision,
                                   cache_dir=config.cache_dir, offline=config.offline,
                                   trust_remote_code=config.trust_remote_code)
    for role in list(repos):
        if role == "unlearned":
            continue
        try:
            check_same_tokenizer(repos["unlearned"].reference, tokenizers["unlearned"].tokenizer,
                                 repos[role].reference, tokenizers[role].tokenizer)
        except InputError:
            if role != "reference" or explicit_reference:
                raise
            notes.append(f"The original's base model {repos[role].reference} uses another tokenizer, so it was not "
                         "probed as the reference; VerbMem is read against the holdout floor.")
            del repos[role], tokenizers[role], found_by[role]
    data = cut_like_verbmem(data, tokenizers["unlearned"].tokenizer, config.probes.verbmem_max_new_tokens)
    if (config.probes.chat_template or spec.chat_template) and spec.benchmark == "wmdp":
        notes.append("WMDP and MMLU are scored without a chat template, as lm-evaluation-harness scores them by "
                     "default; the chat template setting applies to TOFU and KnowMem prompts only.")
    if config.probes.chat_template or spec.chat_template:
        for role, choice in tokenizers.items():
            if not getattr(choice.tokenizer, "chat_template", None):
                raise InputError(f"the tokenizer of {repos[role].reference} has no chat template, but the audit "
                                 "asks to apply one (chat_template)", "drop --chat-template / chat_template: true, "
                                 "or pass --tokenizer with the instruct model's tokenizer")
    calibration = None
    if any(q.stage == "calibrate" for q in quantizers):
        calibration = calibration_set(config.calibration, data.calibration_texts(), config.calibration_tokens,
                                      resolve_dataset=functools.partial(resolve, cache_dir=config.cache_dir,
                                                                        offline=config.offline))
        small = shortfall(calibration, tokenizers["unlearned"].tokenizer)
        if small is not None:
            reporter.note(f"warning: {small}")
            notes.append(small[0].upper() + small[1:] + ".")
        if calibration.source == FORGET:
            notes.append("GPTQ/AWQ were calibrated on the forget set itself (--calibration forget), "
                         "a stronger attack than a user's generic calibration.")
    if config.probes.max_items is not None:
        notes.append(f"Only the first {config.probes.max_items} items of each split were probed (--max-items).")
    return Plan(quantizers=quantizers, spec=spec, spec_source=spec_source, repos=repos, found_by=found_by,
                dataset=dataset, data=data, tokenizers=tokenizers,
                reference=_reference(spec, spec_source, repos, found_by), calibration=calibration, notes=notes,
                adapter_base=base, published=published)


def fetch(plan: Plan, config: AuditConfig, reporter: Reporter) -> None:
    """Phase two: the weights of every model (top-level files only, or those the index names), then the
    checks that need them (pickles, missing weights)."""
    weights = {"cache_dir": config.cache_dir, "offline": config.offline, "allow_pickle": config.allow_pickle}
    for role, repo in list(plan.repos.items()):
        if repo.source == "hub":
            reporter.note(f"fetching the weights of {repo.reference}")
        plan.repos[role] = fetch_weights(repo, **weights)
        stale = stale_weight_files(plan.repos[role].path)
        if stale:
            plan.repos[role] = without_stale_weights(plan.repos[role], home() / "views")
            plan.notes.append(f"{repo.reference} has {', '.join(stale)} beside a sharded index that does not name "
                              "it: the index's shards were audited (transformers alone would load the other file).")
        if role == "unlearned" and plan.adapter_base is not None:
            check_adapter_files(plan.repos[role].path, allow_pickle=config.allow_pickle, label=repo.reference)
            continue
        check_files(plan.repos[role].path, trust_remote_code=config.trust_remote_code,
                    allow_pickle=config.allow_pickle, label=repo.reference)
    if plan.adapter_base is not None:
        _merge(plan, config, reporter, weights)
    for variant in plan.quantizers:  # --published: only the chosen GGUF files, or a checkpoint's weights
        if isinstance(variant, PublishedGGUF):
            reporter.note(f"fetching {variant.filename} from {variant.repo_id}")
            repo = resolve(variant.repo_id, cache_dir=config.cache_dir, offline=config.offline,
                           patterns=[variant.filename])
            variant.fetched(repo.path / variant.filename, repo.commit)
        elif isinstance(variant, PublishedCheckpoint):
            reporter.note(f"fetching the weights of {variant.repo_id}")
            repo = resolve(variant.repo_id, cache_dir=config.cache_dir, offline=config.offline, patterns=METADATA_FILES)
            repo = fetch_weights(repo, **weights)
            check_files(repo.path, trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                        label=variant.repo_id)
            variant.fetched(repo.path, repo.commit)
    try:
        shapes = tensor_shapes(plan.repos["unlearned"].path)
    except InputError:  # pickled weights (allowed): no header to read; a library failure is still one line
        shapes = {}
    plan.n_parameters = parameter_count(shapes)
    billions = plan.n_parameters / 1e9
    if config.device.startswith("cpu") and billions > 1:
        width = {"float32": 4, "bfloat16": 2, "float16": 2}[config.resolved_dtype]
        warning = (f"{plan.repos['unlearned'].reference} has {billions:.1f}B parameters and runs on the CPU in "
                   f"{config.resolved_dtype}: about {billions * width:.0f} GB of memory per model and hours of "
                   "probing; pass --device cuda (or run where torch sees a GPU) if you have one")
        reporter.note(f"warning: {warning}")
        plan.notes.append(warning[0].upper() + warning[1:] + ".")
    for quantizer in plan.quantizers:  # what a library cannot take is refused before the first probe
        check = getattr(quantizer, "check_shapes", None)
        if check is not None:
            check(linear_shapes(shapes))


def _merge(plan: Plan, config: AuditConfig, reporter: Reporter, weights: dict[str, Any]) -> None:
    """Merge an adapter checkpoint into its base (phase two; see unlearn_audit.adapters)."""
    base = fetch_weights(plan.adapter_base, **weights)
    check_files(base.path, trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                label=base.reference)
    reporter.note(f"merging the adapter {plan.repos['unlearned'].reference} into {base.reference} (peft)")
    plan.adapter = merge_adapter(plan.repos["unlearned"], base, home() / "merged",
                                 trust_remote_code=config.trust_remote_code)
    plan.repos["unlearned"] = plan.adapter.as_repo()
    plan.notes.append(f"{plan.adapter.adapter.reference} is a {plan.adapter.peft_type} adapter: audited merged "
                      f"into its base {base.reference} (peft {plan.adapter.peft_version} merge_and_unload), "
                      "as users run it.")


def run_all(plan: Plan, config: AuditConfig, reporter: Reporter) -> Runs:
    """Phase three: every model at full precision and under every variant (the retrained reference at full
    precision only), one model in memory at a time, through the result cache."""
    cache = ResultCache(None if not config.cache_results else (config.results_dir or default_dir()))
    dtype = config.resolved_dtype
    shared_key = {"probes": config.probes.cache_key(), "dtype": dtype, "device": config.device.split(":")[0],
                  "probes_run": [info.name for info in probes_for(plan.data, config.probes.only)],
                  "data": texts_digest(plan.data.texts()), **reproducibility_key(config, dtype)}
    result = Runs(outputs={}, runs=[], models={}, truncated={"generate": 0, "score": 0}, reused=[], computed=[],
                  engine_stats={}, cache_dir=None if cache.root is None else str(cache.root))
    for role, repo in plan.repos.items():
        tokenizer = plan.tokenizers[role]
        model_id = {"commit": repo.commit} if repo.commit else fingerprint_folder(repo.path)
        if tokenizer.repo.path != repo.path:
            model_id = {**model_id, "tokenizer": tokenizer.repo.commit or str(tokenizer.repo.path)}
        variants = [None, *plan.quantizers]  # the reference models under the same attack too
        keys, cached = {}, {}
        for quantizer in variants:
            label = FULL if quantizer is None else quantizer.label
            settings = None if quantizer is None else quantizer.settings()
            if quantizer is not None and quantizer.stage == "calibrate":
                settings = {**settings, "calibration": plan.calibration.describe()}
            keys[label] = cache.key({"model": model_id, "variant": label, "settings": settings, **shared_key})
            hit = cache.load(keys[label])
            if hit is not None:
                cached[label] = hit
        loaded = None
        derived = {q.label for q in variants if q is not None and q.stage == "published" and role != "unlearned"}
        if any(label not in cached and label not in derived for label in keys):
            reporter.note(f"loading {role} model {repo.reference}")
            started = time.time()
            loaded = load_model(repo, device=config.device, dtype=dtype, device_map=config.device_map,
                                trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                                tokenizer=tokenizer.tokenizer)
            plan.timings[f"load_{role}"] = round(time.time() - started, 2)
        if cached:
            reporter.note(f"{role}: reusing {len(cached)} of {len(variants)} cached results")
        full_run = cached.get(FULL)
        n_parameters = loaded.n_parameters if loaded is not None else (full_run.n_parameters if full_run else None)
        if role == "unlearned" and plan.adapter is not None:
            repo_record = plan.adapter.adapter.as_dict()  # the repo audited; the merge is described beside it
        else:
            repo_record = repo.as_dict()
        result.models[role] = {"repo": repo_record, "found_by": plan.found_by[role], "n_parameters": n_parameters,
                               "dtype": dtype, "tokenizer": {**tokenizer.as_dict(), **describe_tokenizer(
                                   tokenizer.tokenizer, tokenizer.repo.path, plan.data.calibration_texts()[:20])}}
        if role == "unlearned" and plan.adapter is not None:
            result.models[role]["adapter"] = plan.adapter.as_dict()
        # Full precision and in-place variants first, on the loaded copy; then that copy is dropped before
        # a library loads or builds its own quantized model: one model in memory at a time.
        finished: dict[str, CachedRun] = {}
        for quantizer in sorted(variants, key=lambda q: 0 if q is None else 1 if q.stage == "weights" else 2):
            label = FULL if quantizer is None else quantizer.label
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
                run = _compute_run(quantizer, role, repo, loaded, plan.data, plan.calibration, config, reporter,
                                   result.engine_stats, plan.scratch)
                cache.store(keys[label], run)
                result.computed.append(f"{role}/{label}")
            else:
                result.reused.append(f"{role}/{label}")
            finished[label] = run
        for quantizer in variants:  # the record keeps the order the variants were asked for
            label = FULL if quantizer is None else quantizer.label
            run = finished[label]
            for key, count in run.truncated.items():
                result.truncated[key] += count
            result.outputs.setdefault(role, {})[label] = run.probes
            result.runs.append(VariantRun(role=role, variant=label, settings=run.settings, proof=run.proof, metrics={},
                                          details={m: o.details for m, o in run.probes.items()},
                                          items={m: [i.as_dict() for i in o.items] for m, o in run.probes.items()},
                                          seconds=run.seconds))
        del loaded
        release_freed()
    return result


def reproducibility_key(config: AuditConfig, dtype: str) -> dict[str, Any]:
    """What else changes results, for the cache key: the numeric libraries' versions and the accelerator
    model (kernels differ); and in 16-bit dtypes, where batched scores are not batch-invariant (padding
    changes the kernels' reduction order), the requested batch size and device map."""
    import torch

    versions = _versions()
    key: dict[str, Any] = {"libraries": {n: versions.get(n) for n in ("torch", "transformers", "tokenizers")}}
    if config.device.startswith("cuda") and torch.cuda.is_available():
        key["accelerator"] = torch.cuda.get_device_name(torch.device(config.device))
    if dtype != "float32":
        key["batching"] = {"batch_size": config.probes.batch_size, "device_map": config.device_map}
    return key


def scratch_bytes(n_parameters: int, kept: list[Quantizer], models: int, gguf: bool = False) -> int:
    """Disk an audit with kept variants writes: each kept variant's checkpoint of every model, kept until the end
    for the diagnostic (the codes, scales and the unquantized tensors: about bits/8 + 10% per parameter plus
    two bytes per parameter for a 16-bit lm_head and embeddings, taken as 15%), and the largest transient file:
    GPT-QModel's offload of the model being quantized (16-bit, two bytes per parameter) or the full-precision GGUF
    file llama.cpp quantizes from (float32, four)."""
    stored = sum(n_parameters * (getattr(q, "bits", 16) / 8 * 1.1 + 0.15 * 2) for q in kept) * models
    transient = 4 if gguf else 2 if kept else 0
    return int(stored + transient * n_parameters)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse before quantizing when ``folder``'s disk has less free space than ``needed`` bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RuntimeFailure(f"the quantized checkpoints this audit keeps need about {needed / 1e9:.1f} GB of scratch "
                             f"space in {folder.parent}, which has {free / 1e9:.1f} GB free", "pass --scratch DIR on a "
                             "larger disk, or test fewer gptq/awq/gguf variants")


def make_scratch(root: Path) -> Path:
    """A working folder for this audit (``scratch-<pid>-*``), after removing those of audits that died
    (killed processes cannot clean up after themselves)."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("scratch-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"scratch-{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def saved_checkpoint(scratch: Path, role: str, label: str) -> Path:
    return scratch / role / label.replace(":", "_")


def compared_after(quantizer: Quantizer) -> bool:
    """GPTQ/AWQ, GGUF k-quants and published GGUF files: the diagnostic compares the two quantized
    checkpoints the audit made (their grids depend on data or on a search), so the audit keeps them."""
    return quantizer.stage == "calibrate" or bool(getattr(quantizer, "compared_after", False))


def diagnose_after(plan: Plan, diagnostic: dict[str, Any] | None) -> None:
    """Compare the two kept checkpoints of each variant whose grid is known only once it is made (GPTQ/AWQ
    group by group, GGUF block by block), or say why not (a side reused from the result cache kept none)."""
    if diagnostic is None or plan.scratch is None:
        return
    for quantizer in plan.quantizers:
        if not compared_after(quantizer):
            continue
        saved_u, saved_o = (saved_checkpoint(plan.scratch, role, quantizer.label) for role in ("unlearned", "original"))
        if not (saved_u.is_dir() and saved_o.is_dir()):
            diagnostic["not_compared"][quantizer.label] = (
                "its grid is known only once it is made, so it is compared from the two quantized checkpoints, and "
                "one of them came from the result cache in this audit (run with --no-cache to compare)")
            continue
        unlearned, original = plan.repos["unlearned"].path, plan.repos["original"].path
        compare = getattr(quantizer, "saved_diff", None)
        diagnostic["overall"][quantizer.label] = (compare(unlearned, original, saved_u, saved_o) if compare is not None
                                                  else calibrated_diff(unlearned, original, saved_u, saved_o, quantizer))
        diagnostic["quantizers"].append(quantizer.label)
        diagnostic["not_compared"].pop(quantizer.label, None)


def diagnose(plan: Plan, config: AuditConfig, reporter: Reporter) -> dict[str, Any] | None:
    """The weight-level diagnostic (no data needed)."""
    try:
        unlearned, original = plan.repos["unlearned"], plan.repos["original"]
        result = weight_diff(unlearned.path, original.path, plan.quantizers,
                             labels=(unlearned.reference, original.reference), run_dtype=config.resolved_dtype,
                             device=config.device if config.device_map is None else "cpu",
                             progress=lambda total: reporter.task("weight diagnostic (no data needed)", total))
        plan.timings["weight_diagnostic"] = result.seconds
        return result.as_dict()
    except InputError as exc:
        plan.notes.append(f"No weight-level diagnostic: {exc.message}.")
        return None


def record(plan: Plan, runs: Runs, diagnostic: dict[str, Any] | None, config: AuditConfig,
           started: float) -> AuditReport:
    """Phase five: figures, verdict and the record every view is rendered from."""
    analysis = analyse(runs.outputs, plan.reference, min_gap=config.thresholds.min_gap,
                       resamples=config.probes.bootstrap_resamples, seed=config.probes.seed)
    labels = [q.label for q in plan.quantizers]
    verdict = decide(analysis, config.thresholds, {label: variant_name(label) for label in labels})
    if config.probes.only is not None:  # `unlearn-audit screen`: say what the verdict rests on
        verdict.headline = "Loss screen only (no generation probes): " + verdict.headline
    for run in runs.runs:
        run.metrics = {m: i.as_dict() for m, i in analysis.values[run.role][run.variant].items()}
        quality = analysis.forget_quality.get(run.role, {}).get(run.variant)
        if quality is not None:  # a p-value: no bootstrap interval
            run.metrics["tofu_forget_quality"] = {"value": quality, "low": None, "high": None}
    pl = plan.spec.privleak
    return AuditReport(
        tool_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=config.command,
        config=config.to_record(),
        spec=plan.spec.model_dump(),
        spec_source=plan.spec_source,
        models=runs.models,
        dataset=plan.dataset.as_dict(),
        data_counts=plan.data.counts(),
        reference={"source": plan.reference.source, "strength": REFERENCE_STRENGTH[plan.reference.source],
                   "privleak_auc": plan.reference.privleak_auc,
                   "privleak_auc_dtype": pl.reference_auc_dtype if plan.reference.source == "published" else None,
                   "description": plan.reference.description,
                   "values": {m: i.as_dict() for m, i in analysis.reference.items()},
                   "floors": {m: {role: i.as_dict() for role, i in by_role.items()}
                              for m, by_role in analysis.floors.items()},
                   "floor_gaps": analysis.floor_gaps},
        variants=labels,
        runs=runs.runs,
        residuals=[s.as_dict() for s in analysis.residuals],
        recoveries=[s.as_dict() for s in analysis.recoveries],
        net_recoveries=[s.as_dict() for s in analysis.net_recoveries],
        verdict=verdict.as_dict(),
        thresholds={**config.to_record()["thresholds"]},
        environment={"python": platform.python_version(), "platform": platform.platform(),
                     "packages": _versions(), "argv0": Path(sys.argv[0]).name},
        truncated=runs.truncated,
        duration_seconds=round(time.time() - started, 1),
        execution={"device": config.device, "device_map": config.device_map, "dtype": config.resolved_dtype,
                   "engine": config.probes.engine, "batch_size": config.probes.batch_size or "auto",
                   "batches": runs.engine_stats, "peak_rss_mb": peak_rss_mb(),
                   "peak_accelerator_mb": peak_accelerator_mb(), "phase_seconds": plan.timings,
                   "cache": {"dir": runs.cache_dir, "reused": runs.reused, "computed": runs.computed}},
        notes=plan.notes,
        weight_diff=diagnostic,
        published=[entry.as_dict() for entry in plan.published] or None,
    )


def audit(config: AuditConfig, reporter: Reporter | None = None) -> AuditReport:
    """Run one audit end to end and return its record (nothing is written; see :func:`write_reports`):
    plan (no weights) -> fetch weights -> weight diagnostic -> probe every run -> analyse and record."""
    reporter = reporter or SilentReporter()
    started = time.time()
    config = dataclasses.replace(config, device=resolve_device(config.device))  # auto: the accelerator if any
    the_plan = plan(config, reporter)
    if the_plan.spec.chat_template and not config.probes.chat_template:
        config = dataclasses.replace(config, probes=dataclasses.replace(config.probes, chat_template=True))
    if the_plan.spec.benchmark == "tofu":
        config = dataclasses.replace(config, probes=dataclasses.replace(config.probes,
                                                                        tofu=the_plan.spec.tofu.model_dump()))
    the_plan.timings["resolve"] = round(time.time() - started, 2)
    t = time.time()
    fetch(the_plan, config, reporter)
    the_plan.timings["fetch"] = round(time.time() - t, 2)
    diagnostic = diagnose(the_plan, config, reporter)  # needs no data: the first answer a user gets
    kept = [q for q in the_plan.quantizers if compared_after(q)]
    writing = [q for q in the_plan.quantizers if getattr(q, "writes_scratch", False)]
    if kept or writing or config.probes.engine == "vllm":  # kept checkpoints, offloads, GGUF files, vLLM's folders
        the_plan.scratch = make_scratch(config.scratch_dir or config.results_dir or default_dir())
        check_free_space(the_plan.scratch, scratch_bytes(the_plan.n_parameters, kept, len(the_plan.repos),
                                                         gguf=bool(writing))
                         + (4 * the_plan.n_parameters if config.probes.engine == "vllm" else 0))
    try:
        runs = run_all(the_plan, config, reporter)
        diagnose_after(the_plan, diagnostic)
    finally:
        if the_plan.scratch is not None:
            shutil.rmtree(the_plan.scratch, ignore_errors=True)
    return record(the_plan, runs, diagnostic, config, started)


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
