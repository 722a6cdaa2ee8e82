"""The audit as stages, in the order data flows through them:

1. :mod:`.planning` — the plan: variants, spec, models, data, tokenizers, checked without a weight file;
2. :mod:`.fetching` — the weights (an adapter merged, published files chosen), checks that need them;
3. :mod:`.diagnosis` — the weight-level diagnostic, before any probe;
4. :mod:`.runs` — every model under every variant, probed, through the result cache (:mod:`.cache`), in a scratch
   folder (:mod:`.scratch`) where variants are kept;
5. :mod:`.recording` — figures, verdict and the record; :mod:`.output` writes it and its views.

:func:`audit` is the spine; it returns an :class:`~unlearn_audit.report.record.AuditReport` and writes nothing.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

from ..config import AuditConfig, resolve_device
from ..report.record import AuditReport
from ..support.home import default_dir
from . import diagnosis, fetching, planning, recording, runs, scratch
from .output import prepare_out_dir, write_reports
from .reporter import Reporter, SilentReporter

__all__ = ["Reporter", "SilentReporter", "audit", "prepare_out_dir", "write_reports"]


def _effective(config: AuditConfig, plan: planning.Plan) -> AuditConfig:
    """The probe settings the spec adds to the user's: its chat template, its TOFU settings."""
    probes = config.probes
    if plan.spec.chat_template and not probes.chat_template:
        probes = dataclasses.replace(probes, chat_template=True)
    if plan.spec.benchmark == "tofu":
        probes = dataclasses.replace(probes, tofu=plan.spec.tofu.model_dump())
    return dataclasses.replace(config, probes=probes)


def audit(config: AuditConfig, reporter: Reporter | None = None) -> AuditReport:
    """Run one audit end to end and return its record (nothing is written; see :func:`write_reports`):
    plan (no weights) -> fetch weights -> weight diagnostic -> probe every run -> analyse and record."""
    reporter = reporter or SilentReporter()
    started = time.time()
    config = dataclasses.replace(config, device=resolve_device(config.device))  # auto: the accelerator if any
    plan = planning.plan(config, reporter)
    config = _effective(config, plan)
    plan.timings["resolve"] = round(time.time() - started, 2)
    t = time.time()
    fetching.fetch(plan, config, reporter)
    plan.timings["fetch"] = round(time.time() - t, 2)
    diagnostic = diagnosis.diagnose(plan, config, reporter)  # needs no data: the first answer a user gets
    plan.scratch = scratch.open_scratch(plan.quantizers, plan.n_parameters, len(plan.repos), config.probes.engine,
                                        config.scratch_dir or config.results_dir or default_dir())
    try:
        done = runs.run_all(plan, config, reporter)
        diagnosis.diagnose_after(plan, diagnostic)
    finally:
        if plan.scratch is not None:
            shutil.rmtree(plan.scratch, ignore_errors=True)
    return recording.record(plan, done, diagnostic, config, started)
