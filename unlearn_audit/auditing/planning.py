"""Phase one of an audit, the plan: everything that can be resolved and checked without a single weight file
(variants and their libraries, the forget-set spec, which models, the dataset and its splits, tokenizers, remote
code, calibration text)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.figures import Reference
from ..attacks import parse_attacks
from ..config import AuditConfig
from ..errors import InputError, UsageError
from ..inputs.adapters import MergedAdapter, adapter_base, is_adapter
from ..inputs.calibration import FORGET, CalibrationSet, calibration_set, shortfall
from ..inputs.data import (ForgetData, card_patterns, cut_like_verbmem, dataset_patterns, load_forget_data,
                           utility_patterns)
from ..inputs.hub import METADATA_FILES, ResolvedRepo, card_metadata, resolve
from ..inputs.models import check_files, check_same_tokenizer
from ..inputs.spec import (PRESET_CHOICES, PRESETS, SPEC_FILENAME, ForgetSpec, load_spec_file, merged, parse_spec,
                           preset_choices, preset_name, preset_spec, spec_for_dataset)
from ..inputs.spec import spec_mapping as _spec_mapping
from ..inputs.split import ForgetSplit, forget_counts, split_forget
from ..inputs.tokenization import TokenizerChoice, choose_tokenizers
from ..quantize import BnbQuantizer, Quantizer, parse_variants
from ..quantize.bnb import quiet_bnb_warnings
from ..quantize.published import PublishedEntry, find_published
from .references import choose_reference, original_of, reference_model
from .reporter import Reporter


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
    """Seconds per phase (resolve, fetch, weight_diagnostic), for the record's execution block."""
    n_parameters: int = 0
    """The unlearned model's parameter count, from its safetensors headers (phase two)."""
    published: list[PublishedEntry] = field(default_factory=list)
    """``--published``: the derivative repos listed and what was done with each."""
    split: ForgetSplit | None = None
    """With ``relearn-forget`` or ``icl``: the forget set's halves (``data`` is then the probed half)."""


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


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _quantizers(config: AuditConfig) -> list[Quantizer]:
    """The variants asked for, each library found (a missing one refused with its install command)."""
    quantizers: list[Quantizer] = parse_variants(config.quant) + parse_attacks(config.attack)
    if any(isinstance(q, BnbQuantizer) for q in quantizers):
        quiet_bnb_warnings()
    for quantizer in quantizers:
        quantizer.require()
    served = [q.label for q in quantizers if q.stage != "weights"]
    if config.probes.engine == "vllm" and served:
        raise UsageError(f"--engine vllm serves full precision and in-place variants (rtn, gguf); not {', '.join(served)}",
                         "run those variants with --engine hf (the default)")
    return quantizers


def _published(config: AuditConfig, unlearned: ResolvedRepo) -> tuple[list[Quantizer], list[PublishedEntry]]:
    """``--published``: the Hub's quantized derivatives of the model, as variants, and what was found."""
    if not config.published:
        return [], []
    if unlearned.repo_id is None:
        raise UsageError(f"--published lists a Hub model's derivatives, and {config.model} is a local folder",
                         "pass the model's Hub id, or drop --published")
    found, entries = find_published(unlearned.repo_id, limit=config.published_max, pattern=config.published_files,
                                    cache_dir=config.cache_dir, offline=bool(config.offline) or _offline())
    for variant in found:
        variant.require()
    return list(found), entries


def _models(config: AuditConfig, spec: ForgetSpec, spec_source: str, unlearned: ResolvedRepo,
            base: ResolvedRepo | None, notes: list[str], common: dict[str, Any]
            ) -> tuple[dict[str, ResolvedRepo], dict[str, str], bool]:
    """Every model the audit probes (role -> folder), how each was found, and whether the reference model was
    named explicitly; remote code refused before anything else is fetched."""
    original_ref, original_rev, original_how = original_of(config, spec, spec_source, unlearned,
                                                           base.reference if base else None)
    repos = {"unlearned": unlearned, "original": resolve(original_ref, revision=original_rev, **common)}
    found_by = {"unlearned": "the audited model", "original": original_how}
    explicit_reference = False
    if spec.retrain:
        repos["retrain"] = resolve(spec.retrain, revision=spec.retrain_revision, **common)
        found_by["retrain"] = f"from the spec, {spec_source}"
    else:
        chosen = reference_model(config, spec, repos["original"], notes, common)
        if chosen is not None:
            repos["reference"], found_by["reference"], explicit_reference = chosen
    preset = PRESETS.get(config.forget or "")
    if preset and original_ref.lower() != preset["original"].lower():
        notes.append(f"The original model {original_ref} is not the {preset['name']} preset's "
                     f"{preset['original']}; the preset's published reference AUC belongs to that model's retrained "
                     "twin, so read PrivLeak with care (name a retrained model in a spec to measure it).")
    for role, repo in repos.items():
        if role == "unlearned" and base is not None:
            continue  # an adapter has no config.json of its own; its base was checked
        check_files(repo.path, trust_remote_code=config.trust_remote_code, allow_pickle=True, label=repo.reference,
                    need_weights=False)
    return repos, found_by, explicit_reference


def _forget_data(config: AuditConfig, spec: ForgetSpec) -> tuple[ResolvedRepo, ForgetData]:
    """The dataset folder (only the configs the spec needs, and the files its card maps them to) and its texts."""
    fetch = functools.partial(resolve, spec.dataset, kind="dataset", cache_dir=config.cache_dir, offline=config.offline)
    dataset = fetch(revision=spec.dataset_revision, patterns=dataset_patterns(spec))
    mapped = card_patterns(dataset.path, spec)  # files the dataset card's configs: mapping names
    if mapped and not all(any(dataset.path.glob(p)) for p in mapped):
        dataset = fetch(revision=dataset.commit or spec.dataset_revision, patterns=dataset_patterns(spec) + mapped)
    utility = None
    if spec.benchmark == "wmdp" and spec.mmlu.configs:
        utility = resolve(spec.mmlu.dataset, kind="dataset", revision=spec.mmlu.dataset_revision,
                          cache_dir=config.cache_dir, offline=config.offline, patterns=utility_patterns(spec)).path
    return dataset, load_forget_data(dataset.path, spec, config.probes.max_items, utility)


def _tokenizers(config: AuditConfig, spec: ForgetSpec, repos: dict[str, ResolvedRepo], found_by: dict[str, str],
                explicit_reference: bool, notes: list[str]) -> dict[str, TokenizerChoice]:
    """Each model's tokenizer; every model must share the unlearned one's (an implicit reference model that does
    not is dropped, with a note), and have a chat template where one is asked for."""
    tokenizers = choose_tokenizers(repos, explicit=config.tokenizer, explicit_revision=config.tokenizer_revision,
                                   spec_tokenizer=spec.tokenizer, spec_revision=spec.tokenizer_revision,
                                   cache_dir=config.cache_dir, offline=config.offline,
                                   trust_remote_code=config.trust_remote_code)
    for role in [r for r in repos if r != "unlearned"]:
        try:
            check_same_tokenizer(repos["unlearned"].reference, tokenizers["unlearned"].tokenizer,
                                 repos[role].reference, tokenizers[role].tokenizer)
        except InputError:
            if role != "reference" or explicit_reference:
                raise
            notes.append(f"The original's base model {repos[role].reference} uses another tokenizer, so it was not "
                         "probed as the reference; VerbMem is read against the holdout floor.")
            del repos[role], tokenizers[role], found_by[role]
    if (config.probes.chat_template or spec.chat_template) and spec.benchmark == "wmdp":
        notes.append("WMDP and MMLU are scored without a chat template, as lm-evaluation-harness scores them by "
                     "default; the chat template setting applies to TOFU and KnowMem prompts only.")
    if config.probes.chat_template or spec.chat_template:
        for role, choice in tokenizers.items():
            if not getattr(choice.tokenizer, "chat_template", None):
                raise InputError(f"the tokenizer of {repos[role].reference} has no chat template, but the audit "
                                 "asks to apply one (chat_template)", "drop --chat-template / chat_template: true, "
                                 "or pass --tokenizer with the instruct model's tokenizer")
    return tokenizers


def _calibration(config: AuditConfig, quantizers: list[Quantizer], data: ForgetData, tokenizer: Any,
                 reporter: Reporter, notes: list[str]) -> CalibrationSet | None:
    """GPTQ/AWQ calibration text, when a calibrated variant is asked for (a short set is warned about)."""
    if not any(q.stage == "calibrate" for q in quantizers):
        return None
    calibration = calibration_set(config.calibration, data.calibration_texts(), config.calibration_tokens,
                                  resolve_dataset=functools.partial(resolve, cache_dir=config.cache_dir,
                                                                    offline=config.offline))
    small = shortfall(calibration, tokenizer)
    if small is not None:
        reporter.note(f"warning: {small}")
        notes.append(small[0].upper() + small[1:] + ".")
    if calibration.source == FORGET:
        notes.append("GPTQ/AWQ were calibrated on the forget set itself (--calibration forget), "
                     "a stronger attack than a user's generic calibration.")
    return calibration


def plan(config: AuditConfig, reporter: Reporter) -> Plan:
    """Phase one: resolve configs, tokenizers, cards, specs and the needed dataset configs only, and check
    everything that can fail without weights (spec, splits, columns, tokenizers, remote code)."""
    quantizers = _quantizers(config)
    notes: list[str] = []
    common = {"cache_dir": config.cache_dir, "offline": config.offline, "patterns": METADATA_FILES}
    unlearned = resolve(config.model, revision=config.revision, **common)
    found, published = _published(config, unlearned)
    quantizers += found
    spec, spec_source = find_spec(config, unlearned, notes)
    base = None
    if is_adapter(unlearned.path):
        base = resolve(adapter_base(unlearned.path, unlearned.reference), **common)
        check_files(base.path, trust_remote_code=config.trust_remote_code, allow_pickle=True, label=base.reference,
                    need_weights=False)
    repos, found_by, explicit_reference = _models(config, spec, spec_source, unlearned, base, notes, common)
    dataset, data = _forget_data(config, spec)
    tokenizers = _tokenizers(config, spec, repos, found_by, explicit_reference, notes)
    data = cut_like_verbmem(data, tokenizers["unlearned"].tokenizer, config.probes.verbmem_max_new_tokens)
    calibration = _calibration(config, quantizers, data, tokenizers["unlearned"].tokenizer, reporter, notes)
    split = None
    if any(getattr(q, "needs_split", False) for q in quantizers):  # relearn-forget, icl: every run probes one half
        split = split_forget(data, config.probes.seed, spec.tofu.author_items)
        data = split.probe
        quantizers = [q.bind(split) if getattr(q, "needs_split", False) else q for q in quantizers]
        counts = ", ".join(f"{n} {part}" for part, n in forget_counts(data).items())
        dropped = ", ".join(f"{n} {part}" for part, n in split.dropped.items() if n)
        notes.append(f"{' and '.join(q.label for q in quantizers if getattr(q, 'needs_split', False))} learn from "
                     f"half of the forget set: it was cut by {split.unit} (seed {split.seed}) into "
                     f"{len(split.train_units)} training and {len(split.probe_units)} probed {split.unit}s, and every "
                     f"run of this audit probes the probed half only ({counts})"
                     + (f"; items tied to documents of both halves or to none were probed in neither ({dropped})"
                        if dropped else "") + ".")
    if config.probes.max_items is not None:
        notes.append(f"Only the first {config.probes.max_items} items of each split were probed (--max-items).")
    return Plan(quantizers=quantizers, spec=spec, spec_source=spec_source, repos=repos, found_by=found_by,
                dataset=dataset, data=data, tokenizers=tokenizers,
                reference=choose_reference(spec, spec_source, repos, found_by), calibration=calibration, notes=notes,
                adapter_base=base, published=published, split=split)
