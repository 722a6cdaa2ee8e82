"""Phase two of an audit: the weights of every model (top-level files only, or those the index names), an adapter
merged into its base, the chosen published files, then the checks that need weights (pickles, missing files, a
library that cannot take the layer shapes) and the size warning."""

from __future__ import annotations

from typing import Any

from ..config import AuditConfig
from ..errors import InputError
from ..inputs.adapters import check_adapter_files, merge_adapter
from ..inputs.checkpoint import linear_shapes, parameter_count, tensor_shapes
from ..inputs.hub import METADATA_FILES, fetch_weights, resolve, stale_weight_files, without_stale_weights
from ..inputs.models import check_files
from ..quantize.published import PublishedCheckpoint, PublishedGGUF
from ..support.home import home
from .planning import Plan
from .reporter import Reporter


def fetch(plan: Plan, config: AuditConfig, reporter: Reporter) -> None:
    """Phase two: the weights of every model, then the checks that need them (pickles, missing weights)."""
    weights = {"cache_dir": config.cache_dir, "offline": config.offline, "allow_pickle": config.allow_pickle}
    _fetch_models(plan, config, reporter, weights)
    if plan.adapter_base is not None:
        _merge(plan, config, reporter, weights)
    _fetch_published(plan, config, reporter, weights)
    try:
        shapes = tensor_shapes(plan.repos["unlearned"].path)
    except InputError:  # pickled weights (allowed): no header to read; a library failure is still one line
        shapes = {}
    plan.n_parameters = parameter_count(shapes)
    _warn_cpu_size(plan, config, reporter)
    for quantizer in plan.quantizers:  # what a library cannot take is refused before the first probe
        check = getattr(quantizer, "check_shapes", None)
        if check is not None:
            check(linear_shapes(shapes))


def _fetch_models(plan: Plan, config: AuditConfig, reporter: Reporter, weights: dict[str, Any]) -> None:
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


def _merge(plan: Plan, config: AuditConfig, reporter: Reporter, weights: dict[str, Any]) -> None:
    """Merge an adapter checkpoint into its base (see unlearn_audit.inputs.adapters)."""
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


def _fetch_published(plan: Plan, config: AuditConfig, reporter: Reporter, weights: dict[str, Any]) -> None:
    """``--published``: only the chosen GGUF files, or a checkpoint's weights."""
    for variant in plan.quantizers:
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


def _warn_cpu_size(plan: Plan, config: AuditConfig, reporter: Reporter) -> None:
    """A model over a billion parameters on the CPU: say what it will cost before it starts."""
    billions = plan.n_parameters / 1e9
    if config.device.startswith("cpu") and billions > 1:
        width = {"float32": 4, "bfloat16": 2, "float16": 2}[config.resolved_dtype]
        warning = (f"{plan.repos['unlearned'].reference} has {billions:.1f}B parameters and runs on the CPU in "
                   f"{config.resolved_dtype}: about {billions * width:.0f} GB of memory per model and hours of "
                   "probing; pass --device cuda (or run where torch sees a GPU) if you have one")
        reporter.note(f"warning: {warning}")
        plan.notes.append(warning[0].upper() + warning[1:] + ".")
