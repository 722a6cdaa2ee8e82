"""Several audits side by side: one row per audited checkpoint, rendered from their records."""

from __future__ import annotations

from typing import Any

from ..analysis.figures import FULL, METRIC_LABELS
from ..probes.metrics import METRICS as REGISTRY
from .record import judged_recoveries

METRICS = tuple(REGISTRY)
"""Every metric a column can show; a comparison shows those its audits measured (MUSE, TOFU, WMDP or a mix)."""


def columns(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(value columns, recovery columns) of the metrics the records carry, in the registry's order."""
    present = {m for rec in records for r in rec["runs"] for m in r["metrics"]}
    values = [m for m in METRICS if m in present]
    return values, [m for m in values if REGISTRY[m].judged]


def compare_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per record: the model, its verdict, its full-precision metrics, and per forget metric the largest
    recovery any tested variant reaches (with that variant)."""
    rows = []
    for rec in records:
        run = next(r for r in rec["runs"] if r["role"] == "unlearned" and r["variant"] == FULL)
        worst = {}
        for s in judged_recoveries(rec):
            if s["value"] is not None and (s["metric"] not in worst or s["value"] > worst[s["metric"]]["value"]):
                worst[s["metric"]] = s
        rows.append({
            "model": rec["models"]["unlearned"]["repo"]["reference"],
            "commit": (rec["models"]["unlearned"]["repo"].get("commit") or "")[:12],
            "original": rec["models"]["original"]["repo"]["reference"],
            "dataset": rec["dataset"]["reference"],
            "decision": rec["verdict"]["decision"],
            "headline": rec["verdict"]["headline"],
            "values": {m: run["metrics"].get(m) for m in METRICS},
            "worst": worst,
            "variants": rec["variants"],
        })
    return rows


def render_compare(records: list[dict[str, Any]], fmt: str) -> str:
    from .names import variant_name
    from .render import _env

    template = _env(fmt == "html").get_template(f"compare.{fmt}.j2")
    values, recoveries = columns(records)
    return template.render(rows=compare_rows(records), variant_name=variant_name, value_columns=values,
                           recovery_columns=recoveries, label=lambda m: METRIC_LABELS.get(m, m))
