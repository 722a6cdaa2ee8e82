"""Several audits side by side: one row per audited checkpoint, rendered from their records."""

from __future__ import annotations

from typing import Any

from ..analysis import FULL
from .record import judged_recoveries

METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")


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
    from .render import _env, variant_name

    template = _env(fmt == "html").get_template(f"compare.{fmt}.j2")
    return template.render(rows=compare_rows(records), variant_name=variant_name)
