"""Views for CI systems, rendered from the record: JUnit XML and a GitHub step summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from ..analysis.figures import METRIC_LABELS
from ..support.formatting import percent
from .names import variant_name
from .record import attack_labels, judged_recoveries


def _case(suite: ET.Element, classname: str, name: str, share: dict[str, Any], threshold: float) -> tuple[int, int]:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    text = (f"{percent(share['value'])} [{percent(share['low'])}–{percent(share['high'])}], threshold {percent(threshold)}: "
            f"{share['status']}")
    if share["status"] in ("exceeds", "over-unlearned"):
        ET.SubElement(case, "failure", message=text, type="threshold").text = text
        return 1, 0
    if share["status"] in ("straddles", "undefined", "not-judged", "too-few-items", "reported"):
        ET.SubElement(case, "skipped", message=text)
        return 0, 1
    ET.SubElement(case, "system-out").text = text
    return 0, 0


def render_junit(report: dict[str, Any]) -> str:
    """One test case per judged share: residual at full precision (PrivLeak's over-unlearning a failure too), the
    gated utility drop, and recovery per variant and metric. FAIL shares are failures; undecided ones (straddling, undefined, not judged) are skipped."""
    model = report["models"]["unlearned"]["repo"]["reference"]
    thresholds = report["thresholds"]
    root = ET.Element("testsuites", name="unlearn-audit")
    suite = ET.SubElement(root, "testsuite", name=f"unlearn-audit {model}", timestamp=report["created_at"],
                          time=f"{report['duration_seconds']:.1f}")
    props = ET.SubElement(suite, "properties")
    for key, value in (("verdict", report["verdict"]["decision"]), ("headline", report["verdict"]["headline"]),
                       ("commit", report["models"]["unlearned"]["repo"].get("commit") or "")):
        ET.SubElement(props, "property", name=key, value=str(value))
    failures = skipped = count = 0
    for share in report["residuals"]:
        f, s = _case(suite, "residual.full-precision", METRIC_LABELS.get(share["metric"], share["metric"]), share,
                     thresholds["max_residual"])
        failures, skipped, count = failures + f, skipped + s, count + 1
    for share in report.get("utility_drops", []):
        if share["variant"] is None and share["status"] != "reported":  # gated by --max-utility-drop
            f, s = _case(suite, "utility-drop.full-precision", METRIC_LABELS.get(share["metric"], share["metric"]),
                         share, thresholds["max_utility_drop"])
            failures, skipped, count = failures + f, skipped + s, count + 1
    attacks = attack_labels(report)
    for share in judged_recoveries(report):
        kind = "attack" if share["variant"] in attacks else "recovery"  # the tamper battery's cases apart
        f, s = _case(suite, f"{kind}.{share['variant']}", METRIC_LABELS.get(share["metric"], share["metric"]), share,
                     thresholds["max_recovery"])
        failures, skipped, count = failures + f, skipped + s, count + 1
    for element in (root, suite):
        element.set("tests", str(count))
        element.set("failures", str(failures))
        element.set("skipped", str(skipped))
        element.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render_step_summary(report: dict[str, Any]) -> str:
    """A short Markdown block for ``$GITHUB_STEP_SUMMARY``: the verdict and the recovery table."""
    verdict = report["verdict"]
    icon = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "⚠️"}[verdict["decision"]]
    lines = [f"### {icon} unlearn-audit {verdict['decision']}: `{report['models']['unlearned']['repo']['reference']}`",
             "", verdict["headline"], "", "| metric | variant | recovery | 95% interval | status |", "|---|---|---|---|---|"]
    for s in judged_recoveries(report):
        lines.append(f"| {METRIC_LABELS.get(s['metric'], s['metric'])} | {variant_name(s['variant'])} | {percent(s['value'])} "
                     f"| {percent(s['low'])} – {percent(s['high'])} | {s['status']} |")
    return "\n".join(lines) + "\n\n"
