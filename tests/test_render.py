"""Report rendering: overlap highlighting by hand, and model output never becoming markup."""

from __future__ import annotations

import copy
import json

from unlearn_audit.report.render import overlap_segments, render_html, render_markdown


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
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;" in html and "onerror=&#34;" in html
    md = render_markdown(record)  # Markdown renderers pass inline HTML through: escaped there too
    assert "<script" not in md.lower() and "<img" not in md.lower() and "&lt;script&gt;" in md
