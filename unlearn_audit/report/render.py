"""Renderers: the record (a dict, as in report.json) in, a string out. The caller decides where it goes.

HTML is rendered with Jinja2 autoescaping on: every model output is data, never markup. Charts are
inline SVG built from numbers only; the page fetches nothing from the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from markupsafe import Markup

from ..analysis.figures import FULL, METRIC_LABELS, METRIC_NOUNS, REFERENCE_ROLES
from ..support.formatting import percent
from .names import short_variant, variant_name
from .record import judged_recoveries

Renderer = Callable[[dict[str, Any]], str]


def template_dir() -> Path:
    """Templates ship inside the wheel (``unlearn_audit/templates``); in a source tree they are top level."""
    packaged = Path(__file__).resolve().parent.parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent.parent / "templates"


@lru_cache(maxsize=2)
def _env(html: bool):  # noqa: ANN202
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=html,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["num"] = _num
    env.filters["pct"] = percent
    env.filters["mdcell"] = _md_cell
    return env


def _md_cell(text: object) -> str:
    """Model text for a Markdown table cell: HTML-escaped (Markdown renderers pass inline HTML through),
    pipes escaped, one line."""
    import html

    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _num(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"




MAIN_ROWS = ("verbmem_f", "verbmem_h", "knowmem_f", "knowmem_r", "privleak_auc", "privleak",
             "tofu_rouge_f", "tofu_prob_f", "tofu_tr_f", "tofu_forget_quality", "tofu_utility",
             *(f"tofu_{w}_{p}" for p in ("r", "ra", "wf") for w in ("rouge", "prob", "tr")),
             "wmdp_acc", "mmlu_acc", "screen_loss", "screen_loss_h")
"""The rows of the figures table, in order; an audit shows those its benchmark measured."""
NATS = ("screen_loss", "screen_loss_h")
"""Rows in nats (the loss screen), shown to three decimals."""
PASSAGE_PROBES = {"verbmem_f": ("VerbMem", "ROUGE-L F1 against the reference", "ROUGE-L F1"),
                  "tofu_f": ("TOFU forget", "ROUGE-L recall against the answer", "ROUGE-L recall"),
                  "wmdp_acc": ("WMDP", "1 when the predicted letter is right", "right")}
"""Whose items the report shows side by side: the first of these the audit ran."""
CHART_METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak_auc", "tofu_rouge_f", "tofu_prob_f", "tofu_tr_f",
                 "tofu_utility", "wmdp_acc", "mmlu_acc")
MIA_ROWS = ("privleak_auc", "mia_minkpp_auc", "mia_zlib_auc", "mia_loss_auc", "mia_mink_tpr1", "mia_mink_tpr5",
            "mia_minkpp_tpr1", "mia_minkpp_tpr5")


def _metric_rows(report: dict[str, Any], metrics: tuple[str, ...] = MAIN_ROWS
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(rows, columns): one row per metric, one column per (role, variant), cells with intervals."""
    runs = {(r["role"], r["variant"]): r for r in report["runs"]}
    columns = [("original", FULL), ("unlearned", FULL)]
    for role in REFERENCE_ROLES:  # the reference model at full precision (its drift: the recovery table)
        if (role, FULL) in runs:
            columns.insert(1, (role, FULL))
    for v in report["variants"]:
        columns += [("original", v), ("unlearned", v)]
    rows = []
    for metric in metrics:
        cells = [runs[key]["metrics"].get(metric) if key in runs else None for key in columns]
        if any(cells):
            rows.append({"metric": metric, "label": METRIC_LABELS.get(metric, metric), "cells": cells,
                         "digits": 3 if metric in NATS else 1})
    return rows, [{"role": r, "variant": v, "name": f"{r} · {variant_name(v)}"} for r, v in columns]


_WORD = re.compile(r"[A-Za-z0-9]+")


def overlap_segments(reference: str | None, generation: str | None) -> list[tuple[str, bool]]:
    """``generation`` cut into (text, on the LCS with ``reference``) pieces, words compared as ROUGE-L
    compares them (lowercased alphanumeric tokens), so the marked words are the ones ROUGE-L counts."""
    generation = generation or ""
    ref = [w.lower() for w in _WORD.findall(reference or "")]
    spans = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(generation)]
    n, m = len(ref), len(spans)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if ref[i] == spans[j][2] else max(table[i + 1][j], table[i][j + 1])
    marked, i, j = set(), 0, 0
    while i < n and j < m:
        if ref[i] == spans[j][2]:
            marked.add(j)
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for k, (start, end, _) in enumerate(spans):
        if start > cursor:
            pieces.append((generation[cursor:start], False))
        pieces.append((generation[start:end], k in marked))
        cursor = end
    if cursor < len(generation):
        pieces.append((generation[cursor:], False))
    return pieces


def _passages(report: dict[str, Any], metric: str = "verbmem_f", limit: int = 30) -> dict[str, Any]:
    """Forget-set items side by side: original, unlearned, and each quantized unlearned variant,
    sorted by how much the worst variant brings back."""
    runs = {(r["role"], r["variant"]): r for r in report["runs"]}
    base = runs.get(("unlearned", FULL))
    if not base or metric not in base["items"]:
        return {"variants": [], "items": []}
    label, scored, score_name = PASSAGE_PROBES.get(metric, (metric, "the probe's item score", "score"))
    variants = [v for v in report["variants"] if ("unlearned", v) in runs]
    items = []
    for idx, item in enumerate(base["items"][metric]):
        row = {"prompt": item["prompt"], "reference": item["reference"],
               "original": runs[("original", FULL)]["items"][metric][idx],
               "unlearned": item, "variants": [runs[("unlearned", v)]["items"][metric][idx] for v in variants]}
        gains = [(v["score"] or 0) - (item["score"] or 0) for v in row["variants"]]
        row["gain"] = max(gains) if gains else 0.0
        row["order"] = idx
        row["unlearned_score"] = item["score"] or 0.0
        items.append(row)
    items.sort(key=lambda r: -r["gain"])
    return {"variants": [variant_name(v) for v in variants], "items": items[:limit], "total": len(items),
            "label": label, "scored": scored, "score_name": score_name}


def _bars(report: dict[str, Any], metric: str) -> Markup:
    """An inline SVG bar chart of one metric across models and variants, with 95% interval whiskers."""
    _, columns = _metric_rows(report)
    runs = {(r["role"], r["variant"]): r for r in report["runs"]}
    values = [runs[(c["role"], c["variant"])]["metrics"].get(metric) for c in columns]
    bar, gap, height, top = 26, 10, 150, 12
    width = 54 + len(columns) * (bar + gap)
    scale = lambda v: top + height - (max(0.0, min(100.0, v)) / 100) * height  # noqa: E731
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height + 90}" role="img" '
             f'aria-label="{METRIC_LABELS.get(metric, metric)} by model and variant">']
    for y in (0, 25, 50, 75, 100):
        parts.append(f'<line x1="34" x2="{width}" y1="{scale(y):.1f}" y2="{scale(y):.1f}" class="grid"/>'
                     f'<text x="28" y="{scale(y) + 4:.1f}" class="axis" text-anchor="end">{y}</text>')
    for i, (col, val) in enumerate(zip(columns, values)):
        x = 44 + i * (bar + gap)
        cls = "bar-" + col["role"]
        if val and val.get("value") is not None:
            y = scale(val["value"])
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{top + height - y:.1f}" class="{cls}">'
                         f'<title>{col["role"]} · {variant_name(col["variant"])}: {val["value"]:.1f}</title></rect>')
            if val.get("low") is not None and val.get("high") is not None:
                cx = x + bar / 2
                parts.append(f'<line x1="{cx}" x2="{cx}" y1="{scale(val["high"]):.1f}" y2="{scale(val["low"]):.1f}" class="ci"/>')
        short = ("O" if col["role"] == "original" else "U" if col["role"] == "unlearned" else "R")
        vlabel = short_variant(col["variant"])
        parts.append(f'<text x="{x + bar / 2}" y="{top + height + 14}" class="axis" text-anchor="middle">{short}</text>'
                     f'<text x="{x + bar / 2}" y="{top + height + 28}" class="axis" text-anchor="middle">{vlabel}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _heat_colour(share: float | None) -> str:
    """White at 0% recovered, deep red at 100% or more; grey when undefined."""
    if share is None:
        return "#e4e8ef"
    x = max(0.0, min(1.0, share))
    r, g, b = (255, int(255 - 180 * x), int(255 - 200 * x))
    return f"#{r:02x}{g:02x}{b:02x}"


def _heat_map(report: dict[str, Any]) -> Markup:
    """Recovery as a metric x variant grid of coloured cells with the share written in each."""
    variants = list(dict.fromkeys(s["variant"] for s in judged_recoveries(report)))
    metrics = list(dict.fromkeys(s["metric"] for s in judged_recoveries(report)))
    if not variants:
        return Markup("")
    cell_w, cell_h, left, top = 96, 34, 170, 28
    width, height = left + cell_w * len(variants) + 4, top + cell_h * len(metrics) + 4
    by_key = {(s["metric"], s["variant"]): s for s in judged_recoveries(report)}
    parts = [f'<svg class="heat" viewBox="0 0 {width} {height}" width="{width}" role="img" '
             'aria-label="recovery by metric and quantized variant">']
    for j, v in enumerate(variants):
        parts.append(f'<text x="{left + j * cell_w + cell_w / 2}" y="{top - 8}" class="axis" '
                     f'text-anchor="middle">{Markup.escape(v)}</text>')
    for i, m in enumerate(metrics):
        y = top + i * cell_h
        parts.append(f'<text x="{left - 8}" y="{y + cell_h / 2 + 4}" class="axis" text-anchor="end">'
                     f'{Markup.escape(METRIC_LABELS.get(m, m))}</text>')
        for j, v in enumerate(variants):
            s = by_key.get((m, v))
            value = s["value"] if s else None
            x = left + j * cell_w
            label = percent(value)
            parts.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" '
                         f'fill="{_heat_colour(value)}"><title>{Markup.escape(m)} · {Markup.escape(v)}: {label} '
                         f'({Markup.escape(s["status"] if s else "")})</title></rect>'
                         f'<text x="{x + cell_w / 2}" y="{y + cell_h / 2 + 4}" text-anchor="middle" '
                         f'class="heat-label">{label}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _layer_chart(rows: list[dict[str, Any]]) -> Markup:
    """Per-layer bars: share of the weights unlearning moved that the quantizer maps back (0-100%)."""
    width, height, top = 560, 120, 8
    bar = max(2.0, (width - 40) / max(1, len(rows)) - 2)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height + 24}" role="img" '
             'aria-label="share of moved weights mapped back, per layer">']
    for y in (0, 50, 100):
        yy = top + height - y / 100 * height
        parts.append(f'<line x1="34" x2="{width}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                     f'<text x="28" y="{yy + 4:.1f}" class="axis" text-anchor="end">{y}%</text>')
    for i, row in enumerate(rows):
        value = row.get("same_code_of_moved")
        if value is None:
            continue
        x = 40 + i * (bar + 2)
        h = value * height
        parts.append(f'<rect x="{x:.1f}" y="{top + height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                     f'class="bar-unlearned"><title>{row["name"]}: {value * 100:.1f}%</title></rect>')
    parts.append(f'<text x="40" y="{top + height + 16}" class="axis">layers in file order →</text></svg>')
    return Markup("".join(parts))


SORT_SCRIPT = (
    "document.querySelectorAll('button[data-sort]').forEach(function(button){"
    "button.addEventListener('click',function(){var box=document.getElementById('passage-list');"
    "var key=button.getAttribute('data-sort');var items=Array.prototype.slice.call(box.children);"
    "items.sort(function(a,b){return key==='order'?a.dataset.order-b.dataset.order:b.dataset[key]-a.dataset[key];});"
    "items.forEach(function(item){box.appendChild(item);});});});"
)
"""The page's only script: re-orders the passages. The CSP allows exactly this text (by its hash)."""


def _script_hash(script: str) -> str:
    import base64
    import hashlib

    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def _recovery_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant's gross recovery beside the net one (minus the reference model's drift), when there is one."""
    net = {(s["metric"], s["variant"]): s for s in report.get("net_recoveries") or []}
    return [{"gross": s, "net": net.get((s["metric"], s["variant"]))} for s in report["recoveries"]]


_STATUS_WORDS = {"exceeds": "brings it back", "straddles": "cannot tell", "ok": "holds", "undefined": "undefined",
                 "not-judged": "not judged", "too-few-items": "too few items", "reported": "reported"}
_STATUS_ORDER = ("exceeds", "straddles", "too-few-items", "ok", "reported", "not-judged", "undefined")


def published_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``--published``: one row per derivative file: its type, the largest judged recovery and the verdict
    on it (the worst status over the judged metrics), or why it was not audited."""
    from .record import judged_recoveries

    rows = []
    shares = judged_recoveries(report)
    runs = {(r["role"], r["variant"]): r for r in report["runs"]}
    for entry in report.get("published") or []:
        for file in entry["files"]:
            label = f"published:{entry['repo']}/{file}"
            mine = [x for x in shares if x["variant"] == label]
            worst = min((x["status"] for x in mine), key=_STATUS_ORDER.index, default="undefined")
            values = [x["value"] for x in mine if x["value"] is not None]
            run = runs.get(("unlearned", label)) or {}
            rows.append({"repo": entry["repo"], "file": file, "type": ((run.get("settings") or {}).get("file_type") or "?"),
                         "max_recovery": max(values) if values else None, "status": _STATUS_WORDS.get(worst, worst)})
        for file, why in entry["skipped"].items():
            rows.append({"repo": entry["repo"], "file": file, "type": None, "max_recovery": None,
                         "status": f"not audited: {why}"})
    return rows


def battery_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The tamper battery, one row per attack: what it cost on the unlearned model (steps, samples, tokens, seconds)
    and on the reference, and per judged metric its recovery (net of the reference's gain under the same attack
    where there is a reference model), with the reference's gain beside it."""
    from .record import attack_labels, judged_recoveries

    runs = {(r["role"], r["variant"]): r for r in report["runs"]}
    reference = next((role for role in REFERENCE_ROLES if (role, FULL) in runs), None)
    shares = judged_recoveries(report)
    rows = []
    for label in attack_labels(report):
        run = runs.get(("unlearned", label)) or {}
        ref_proof = (runs.get((reference, label)) or {}).get("proof") or {} if reference else {}
        rows.append({"label": label, "proof": run.get("proof") or {}, "reference_seconds": ref_proof.get("seconds"),
                     "run_seconds": run.get("seconds"), "shares": [x for x in shares if x["variant"] == label]})
    return rows


def _battery_chart(rows: list[dict[str, Any]], threshold: float) -> Markup:
    """Horizontal bars: each attack's recovery per judged metric (net where there is a reference model), 95% interval
    whiskers, the threshold as a dashed line; the axis runs from -25% to 125% (values beyond are drawn at the edge)."""
    bars = [(row["label"], s) for row in rows for s in row["shares"] if s["value"] is not None]
    if not bars:
        return Markup("")
    lo, hi, left, width, step = -0.25, 1.25, 230, 300, 18
    x = lambda v: left + (max(lo, min(hi, v)) - lo) / (hi - lo) * width  # noqa: E731
    height = 24 + step * len(bars)
    parts = [f'<svg class="chart" viewBox="0 0 {left + width + 20} {height + 20}" role="img" '
             f'aria-label="Recovery by attack">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="8" y2="{height}" class="grid"/>'
                     f'<text x="{x(tick):.1f}" y="{height + 12}" class="axis" text-anchor="middle">{tick:.0%}</text>')
    parts.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="8" y2="{height}" class="threshold"/>')
    for i, (label, share) in enumerate(bars):
        y = 12 + i * step
        start, end = sorted((x(0), x(share["value"])))
        name = Markup.escape(f"{short_variant(label)} · {METRIC_LABELS.get(share['metric'], share['metric'])}")
        parts.append(f'<text x="{left - 6}" y="{y + 10}" class="axis" text-anchor="end">{name}</text>'
                     f'<rect x="{start:.1f}" y="{y}" width="{max(end - start, 1):.1f}" height="12" '
                     f'class="bar-{Markup.escape(share["status"])}"><title>{name}: {share["value"]:.0%} '
                     f"({Markup.escape(share['status'])})</title></rect>")
        if share.get("low") is not None and share.get("high") is not None:
            parts.append(f'<line x1="{x(share["low"]):.1f}" x2="{x(share["high"]):.1f}" y1="{y + 6}" y2="{y + 6}" '
                         f'class="ci"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _run_value(report: dict[str, Any]):  # noqa: ANN202
    """``run_value(role, variant, metric)``: that run's value of the metric, or ``None``."""
    runs = {(r["role"], r["variant"]): r["metrics"] for r in report["runs"]}
    return lambda role, variant, metric: (runs.get((role, variant), {}).get(metric) or {}).get("value")


def view(report: dict[str, Any]) -> dict[str, Any]:
    """Everything the templates show, derived from the record only."""
    rows, columns = _metric_rows(report)
    return {
        "r": report,
        "rows": rows,
        "mia_rows": _metric_rows(report, MIA_ROWS)[0],
        "columns": columns,
        "variant_name": variant_name,
        "metric_label": lambda m: METRIC_LABELS.get(m, m),
        "metric_noun": lambda m: METRIC_NOUNS.get(m, m),
        "metric_unit": lambda m: "nats" if m in NATS else "points",
        "passages": _passages(report, next((m for m in PASSAGE_PROBES if any(m in r["items"] for r in report["runs"])),
                                           "verbmem_f")),
        "knowmem_passages": _passages(report, "knowmem_f"),
        "bars": {m: _bars(report, m) for m in CHART_METRICS
                 if any(m in r["metrics"] for r in report["runs"])},
        "FULL": FULL,
        "run_value": _run_value(report),
        "marked": overlap_segments,
        "heat_map": _heat_map(report),
        "sort_script": Markup(SORT_SCRIPT),
        "sort_script_hash": _script_hash(SORT_SCRIPT),
        "short_variant": short_variant,
        "diff": report.get("weight_diff"),
        "recovery_rows": _recovery_rows(report),
        "published_rows": published_rows(report),
        "battery": (battery := battery_rows(report)),
        "battery_chart": _battery_chart(battery, report["thresholds"]["max_recovery"]),
        "layer_charts": {q: _layer_chart(rows) for q, rows in (report.get("weight_diff") or {}).get("layers", {}).items()},
    }


def render_markdown(report: dict[str, Any]) -> str:
    return _env(False).get_template("report.md.j2").render(**view(report))


def render_html(report: dict[str, Any]) -> str:
    return _env(True).get_template("report.html.j2").render(**view(report))


def render_json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)


def _junit(report: dict[str, Any]) -> str:
    from .ci import render_junit

    return render_junit(report)


RENDERERS: dict[str, tuple[str, Renderer]] = {
    "json": ("report.json", render_json),
    "md": ("report.md", render_markdown),
    "html": ("report.html", render_html),
    "junit": ("report.junit.xml", _junit),
}
"""format -> (file name, renderer)"""
