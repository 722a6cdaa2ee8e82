"""A sweep's leaderboard: one row per checkpoint, from its record (or its one-line error), ranked, written as
``leaderboard.json``, ``.csv``, ``.md`` and ``.html`` (sortable columns, recovery plotted against utility)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

from markupsafe import Markup

from ..analysis.figures import FULL, METRIC_LABELS
from .record import judged_recoveries

UTILITY_METRICS = ("tofu_utility", "mmlu_acc", "knowmem_r")
"""The utility read for the leaderboard, the first the record carries: TOFU's model utility, MMLU, KnowMem retain."""
DECISIONS = ("PASS", "INCONCLUSIVE", "FAIL")


@dataclass(frozen=True)
class LeaderboardRow:
    """One checkpoint of a sweep.

    Attributes:
        rank: 1 = the most robust (see :func:`rank_rows`: verdict, then largest recovery, then residual).
        model: the checkpoint as given (Hub id or folder).
        report: the folder of its reports, relative to the sweep's folder.
        decision: PASS, FAIL, INCONCLUSIVE, or ERROR.
        exit_code: what ``check`` would have exited with (0, 1, 4; 2 or 3 for an error).
        residual, residual_metric: the largest judged residual at full precision and its metric.
        worst_recovery, worst_metric, worst_variant: the largest judged recovery (net of the reference's move where
            there is one) and where.
        utility, utility_metric: the unlearned model's utility at full precision (0-100).
        error: the one-line error of a checkpoint that could not be audited.
        resumed: whether its record was reused from an earlier, interrupted sweep.
        screened_only: the checkpoint got the loss screen only (``--triage``).
    """

    rank: int
    model: str
    report: str
    decision: str
    exit_code: int
    residual: float | None = None
    residual_metric: str | None = None
    worst_recovery: float | None = None
    worst_metric: str | None = None
    worst_variant: str | None = None
    utility: float | None = None
    utility_metric: str | None = None
    error: str | None = None
    resumed: bool = False
    screened_only: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_from_record(model: str, report: str, record: dict[str, Any], *, resumed: bool = False,
                    screened_only: bool = False) -> LeaderboardRow:
    """A checkpoint's row, read from its record only."""
    judged = set(record["thresholds"]["judged"])
    residuals = [s for s in record["residuals"] if s["metric"] in judged and s["value"] is not None]
    recoveries = [s for s in judged_recoveries(record) if s["metric"] in judged and s["value"] is not None]
    residual = max(residuals, key=lambda s: s["value"], default=None)
    worst = max(recoveries, key=lambda s: s["value"], default=None)
    run = next(r for r in record["runs"] if r["role"] == "unlearned" and r["variant"] == FULL)
    utility = next((m for m in UTILITY_METRICS if (run["metrics"].get(m) or {}).get("value") is not None), None)
    return LeaderboardRow(
        rank=0, model=model, report=report, decision=record["verdict"]["decision"],
        exit_code=int(record["verdict"]["exit_code"]),
        residual=residual["value"] if residual else None, residual_metric=residual["metric"] if residual else None,
        worst_recovery=worst["value"] if worst else None, worst_metric=worst["metric"] if worst else None,
        worst_variant=worst["variant"] if worst else None,
        utility=run["metrics"][utility]["value"] if utility else None, utility_metric=utility,
        resumed=resumed, screened_only=screened_only)


def error_row(model: str, report: str, error: str, exit_code: int) -> LeaderboardRow:
    return LeaderboardRow(rank=0, model=model, report=report, decision="ERROR", exit_code=exit_code, error=error)


def rank_rows(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    """Ranked most robust first: by the verdict (PASS, INCONCLUSIVE, FAIL), then the largest recovery any variant
    reaches, then the residual; a figure that could not be computed ranks after every computed one, and errors come
    last, in the order given."""
    def key(row: LeaderboardRow) -> tuple:
        missing = float("inf")
        return (DECISIONS.index(row.decision) if row.decision in DECISIONS else len(DECISIONS),
                missing if row.worst_recovery is None else row.worst_recovery,
                missing if row.residual is None else row.residual)

    ordered = sorted(rows, key=key)  # stable: ties keep the sweep's order
    return [LeaderboardRow(**{**row.as_dict(), "rank": i}) for i, row in enumerate(ordered, 1)]


def sweep_exit_code(rows: list[LeaderboardRow]) -> int:
    """Any FAIL: 1; else any INCONCLUSIVE: 4; else the first error's code (2 bad input, 3 runtime); else 0."""
    decisions = [row.decision for row in rows]
    if "FAIL" in decisions:
        return 1
    if "INCONCLUSIVE" in decisions:
        return 4
    return next((row.exit_code for row in rows if row.decision == "ERROR"), 0)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _label(metric: str | None) -> str:
    return METRIC_LABELS.get(metric, metric) if metric else "–"


def render_json(rows: list[LeaderboardRow], meta: dict[str, Any]) -> str:
    return json.dumps({**meta, "rows": [row.as_dict() for row in rows]}, indent=2, ensure_ascii=False)


def render_csv(rows: list[LeaderboardRow]) -> str:
    buf = io.StringIO()
    fields = list(LeaderboardRow.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_dict())
    return buf.getvalue()


def render_markdown(rows: list[LeaderboardRow], meta: dict[str, Any]) -> str:
    from .render import _md_cell

    lines = [f"# unlearn-audit sweep: {len(rows)} checkpoints", "",
             f"Forget set and variants as audited: {_md_cell(meta.get('settings', ''))}. Ranked most robust first "
             "(verdict, then the largest recovery, then the residual).", "",
             "| rank | model | verdict | largest residual | largest recovery | under | utility | report |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = r.decision + (" (screened only)" if r.screened_only else "") + (" (resumed)" if r.resumed else "")
        if r.error:
            verdict += f": {r.error}"
        lines.append(f"| {r.rank} | {_md_cell(r.model)} | {_md_cell(verdict)} | {_pct(r.residual)} "
                     f"{_md_cell(_label(r.residual_metric)) if r.residual_metric else ''} | {_pct(r.worst_recovery)} "
                     f"{_md_cell(_label(r.worst_metric)) if r.worst_metric else ''} | "
                     f"{_md_cell(r.worst_variant or '–')} | {_num(r.utility)} | [{_md_cell(r.report)}]"
                     f"({r.report}/report.md) |")
    return "\n".join(lines) + "\n"


def _scatter(rows: list[LeaderboardRow]) -> Markup:
    """Largest recovery (y, 0-125%) against utility (x, 0-100) for every audited checkpoint."""
    points = [r for r in rows if r.worst_recovery is not None and r.utility is not None]
    if not points:
        return Markup("")
    left, top, width, height = 50, 10, 420, 240
    x = lambda u: left + max(0.0, min(100.0, u)) / 100 * width  # noqa: E731
    y = lambda v: top + height - (max(-0.25, min(1.25, v)) + 0.25) / 1.5 * height  # noqa: E731
    parts = [f'<svg class="chart" viewBox="0 0 {left + width + 20} {top + height + 40}" role="img" '
             'aria-label="Largest recovery against utility">']
    for tick in (0, 0.25, 0.5, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + width}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="axis" text-anchor="end">{tick:.0%}</text>')
    for tick in (0, 25, 50, 75, 100):
        parts.append(f'<text x="{x(tick):.1f}" y="{top + height + 14}" class="axis" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + height + 32}" class="axis" text-anchor="middle">'
                 'utility at full precision</text>')
    for r in points:
        name = Markup.escape(f"#{r.rank} {r.model}: {_pct(r.worst_recovery)} under {r.worst_variant}, "
                             f"utility {_num(r.utility)}")
        parts.append(f'<circle cx="{x(r.utility):.1f}" cy="{y(r.worst_recovery):.1f}" r="5" '
                     f'class="dot-{Markup.escape(r.decision)}"><title>{name}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


TABLE_SORT_SCRIPT = (
    "document.querySelectorAll('th[data-col]').forEach(function(th){th.addEventListener('click',function(){"
    "var body=th.closest('table').tBodies[0];var col=+th.dataset.col;var asc=th.dataset.dir!=='asc';"
    "th.dataset.dir=asc?'asc':'desc';var rows=Array.prototype.slice.call(body.rows);"
    "rows.sort(function(a,b){var x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;"
    "var nx=parseFloat(x),ny=parseFloat(y);var c=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(String(y)):nx-ny;"
    "return asc?c:-c;});rows.forEach(function(r){body.appendChild(r);});});});"
)
"""The leaderboard page's only script: sorts the table by the clicked column. The CSP allows exactly this text."""


def render_html(rows: list[LeaderboardRow], meta: dict[str, Any]) -> str:
    from .names import variant_name
    from .render import _env, _script_hash

    template = _env(True).get_template("leaderboard.html.j2")
    return template.render(rows=rows, meta=meta, label=_label, pct=_pct, num=_num, variant_name=variant_name,
                           scatter=_scatter(rows), sort_script=Markup(TABLE_SORT_SCRIPT),
                           sort_script_hash=_script_hash(TABLE_SORT_SCRIPT))


RENDERERS = {"leaderboard.json": lambda rows, meta: render_json(rows, meta),
             "leaderboard.csv": lambda rows, meta: render_csv(rows),
             "leaderboard.md": render_markdown, "leaderboard.html": render_html}
"""file name -> renderer(rows, meta)"""
