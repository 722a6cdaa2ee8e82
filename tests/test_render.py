"""Report rendering: overlap highlighting by hand, and model output never becoming markup."""

from __future__ import annotations

import copy
import json
import re

import pytest

from unlearn_audit.report.render import SORT_SCRIPT, overlap_segments, render_html, render_markdown


def test_overlap_marks_the_longest_common_subsequence_by_hand():
    # reference words: the cat sat on the mat; generation words: the cat lay on the mat
    # LCS = the cat on the mat -> every generation word but "lay" is marked
    pieces = overlap_segments("the cat sat on the mat", "The cat lay, on the mat!")
    assert "".join(text for text, _ in pieces) == "The cat lay, on the mat!"
    assert [text for text, hit in pieces if hit] == ["The", "cat", "on", "the", "mat"]
    assert overlap_segments("abc", None) == []
    assert overlap_segments(None, "x y") == [("x", False), (" ", False), ("y", False)]


HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">'


def test_model_output_is_escaped_everywhere(audits):
    record = json.loads((audits["fragile"][1] / "report.json").read_text())
    record = copy.deepcopy(record)
    for run in record["runs"]:
        for items in run["items"].values():
            for item in items:
                item["generation"] = HOSTILE + (item["generation"] or "")
                item["prompt"] = HOSTILE
    html = render_html(record)
    assert re.findall(r"<script>(.*?)</script>", html, re.S) == [SORT_SCRIPT]  # the page's own script only
    assert "<img" not in html.lower()
    assert "&lt;script&gt;" in html and "onerror=&#34;" in html
    md = render_markdown(record)  # Markdown renderers pass inline HTML through: escaped there too
    assert "<script" not in md.lower() and "<img" not in md.lower() and "&lt;script&gt;" in md


def test_html_stays_small_at_muse_scale(audits):
    """MUSE-sized data: 100 VerbMem, 100 + 100 KnowMem and 100 + 100 PrivLeak items per run; the HTML shows a
    selection, the record keeps everything."""
    record = copy.deepcopy(json.loads((audits["fragile"][1] / "report.json").read_text()))
    for run in record["runs"]:
        for key, items in run["items"].items():
            factor = -(-200 // len(items)) if key == "privleak" else -(-100 // len(items))
            run["items"][key] = [dict(item, id=f"{item['id']}#{k}") for k in range(factor) for item in items]
    html = render_html(record)
    assert len(html.encode()) < 2_000_000
    assert len(record["runs"][0]["items"]["verbmem_f"]) >= 100


def test_compare_puts_audits_side_by_side(audits, tmp_path):
    from typer.testing import CliRunner

    from unlearn_audit.cli import app

    paths = [str(audits[name][1] / "report.json") for name in ("fragile", "robust")]
    result = CliRunner().invoke(app, ["compare", *paths, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "compare.md").read_text()
    assert "`miniature/fragile`" in md and "**FAIL**" in md and "**PASS**" in md
    import re

    largest = max(int(x) for x in re.findall(r"(\d+)% \(", md))  # fragile's largest (net) recovery
    assert largest >= 95
    hostile = json.loads((audits["fragile"][1] / "report.json").read_text())
    hostile["models"]["unlearned"]["repo"]["reference"] = HOSTILE
    from unlearn_audit.report.compare import render_compare

    html = render_compare([hostile, hostile], "html")
    assert "<script" not in html.lower() and "&lt;script&gt;" in html
    assert CliRunner().invoke(app, ["compare", paths[0]]).exit_code == 2


def test_percent_never_shows_negative_zero():
    from unlearn_audit.support.formatting import percent

    assert [percent(x) for x in (0.943, -0.003, 0.0, None, float("nan"), -0.05, 1.0)] == \
        ["94%", "0%", "0%", "n/a", "n/a", "-5%", "100%"]


def test_over_unlearning_and_utility_drop_shown_in_every_view(audits, tmp_path):
    """The robust audit's record (schema 5: utility_drops, thresholds with the over-unlearning line), with PrivLeak's
    residual planted as over-unlearned and the utility gate set: the JSON validates, and HTML, Markdown and JUnit show
    both, the utility's original and unlearned values beside the drop."""
    import jsonschema

    from unlearn_audit.report.ci import render_junit
    from unlearn_audit.report.record import SCHEMA_PATH

    record = copy.deepcopy(json.loads((audits["robust"][1] / "report.json").read_text()))
    assert record["schema_version"] == 5 and record["thresholds"]["max_over_unlearning"] == 0.5
    drops = {(s["metric"], s["variant"]): s for s in record["utility_drops"]}
    assert set(drops) == {("knowmem_r", None), ("knowmem_r", "rtn:8:g128"), ("knowmem_r", "rtn:4:g128")}
    runs = {(r["role"], r["variant"]): r["metrics"] for r in record["runs"]}
    o, u = runs[("original", "full")]["knowmem_r"]["value"], runs[("unlearned", "full")]["knowmem_r"]["value"]
    assert drops[("knowmem_r", None)]["value"] == pytest.approx((o - u) / o)  # by hand from the record's values
    privleak = next(s for s in record["residuals"] if s["metric"] == "privleak")
    privleak.update(value=-1.2, low=-1.5, high=-0.9, status="over-unlearned")
    full = drops[("knowmem_r", None)]
    full.update(value=0.4, low=0.3, high=0.5, status="exceeds")
    record["thresholds"]["max_utility_drop"] = 0.2
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    html, md, junit = render_html(record), render_markdown(record), render_junit(record)
    assert re.search(r'<tr class="over-unlearned"><td>PrivLeak</td><td class="num">-120%</td>', html)
    assert "a residual below -50% is over-unlearned" in html and "PrivLeak judged both ways" in md
    assert '<table id="utility">' in html and "gated at 20%" in html
    assert f"| KnowMem (retain, utility) | full precision | {o:.1f} | {u:.1f} | 40% | 30% – 50% | exceeds |" in md
    assert 'classname="utility-drop.full-precision"' in junit and junit.count("<failure") >= 2
