"""The last phase of an audit: the figures (residuals, recoveries, intervals), the verdict, and the typed record every
view is rendered from."""

from __future__ import annotations

import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..analysis.figures import Analysis, analyse
from ..analysis.verdict import decide
from ..config import AuditConfig
from ..report.names import variant_name
from ..report.record import AuditReport
from ..support.resources import peak_accelerator_mb, peak_rss_mb
from ..version import __version__
from .environment import library_versions
from .planning import Plan
from .references import REFERENCE_STRENGTH
from .runs import Runs


def record(plan: Plan, runs: Runs, diagnostic: dict[str, Any] | None, config: AuditConfig,
           started: float) -> AuditReport:
    """Figures, verdict and the record every view is rendered from."""
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
        reference=_reference_block(plan, analysis),
        variants=labels,
        runs=runs.runs,
        residuals=[s.as_dict() for s in analysis.residuals],
        recoveries=[s.as_dict() for s in analysis.recoveries],
        net_recoveries=[s.as_dict() for s in analysis.net_recoveries],
        utility_drops=[s.as_dict() for s in analysis.utility_drops],
        verdict=verdict.as_dict(),
        thresholds={**config.to_record()["thresholds"]},
        environment={"python": platform.python_version(), "platform": platform.platform(),
                     "packages": library_versions(), "argv0": Path(sys.argv[0]).name},
        truncated=runs.truncated,
        duration_seconds=round(time.time() - started, 1),
        execution=_execution_block(plan, runs, config),
        notes=plan.notes,
        weight_diff=diagnostic,
        published=[entry.as_dict() for entry in plan.published] or None,
        split=plan.split.describe() if plan.split is not None else None,
    )


def _reference_block(plan: Plan, analysis: Analysis) -> dict[str, Any]:
    """What the residuals and recoveries were read against, how far to trust it, and its figures."""
    source = plan.reference.source
    return {"source": source, "strength": REFERENCE_STRENGTH[source],
            "privleak_auc": plan.reference.privleak_auc,
            "privleak_auc_dtype": plan.spec.privleak.reference_auc_dtype if source == "published" else None,
            "description": plan.reference.description,
            "values": {m: i.as_dict() for m, i in analysis.reference.items()},
            "floors": {m: {role: i.as_dict() for role, i in by_role.items()} for m, by_role in analysis.floors.items()},
            "floor_gaps": analysis.floor_gaps}


def _execution_block(plan: Plan, runs: Runs, config: AuditConfig) -> dict[str, Any]:
    """Where and how it ran: device, dtype, engine and its batches, peaks, phase times, the cache's part."""
    return {"device": config.device, "device_map": config.device_map, "dtype": config.resolved_dtype,
            "engine": config.probes.engine, "batch_size": config.probes.batch_size or "auto",
            "batches": runs.engine_stats, "peak_rss_mb": peak_rss_mb(),
            "peak_accelerator_mb": peak_accelerator_mb(), "phase_seconds": plan.timings,
            "cache": {"dir": runs.cache_dir, "reused": runs.reused, "computed": runs.computed,
                      "rejected": runs.rejected}}
