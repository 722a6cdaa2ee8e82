"""The HTML report in a real browser (Debian's headless Chromium): it renders, shows the verdict, and
model output never executes. Skipped, with the reason shown, where Chromium is not installed."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from unlearn_audit.report.render import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90)


def test_report_renders_and_hostile_output_stays_text(audits, tmp_path):
    record = copy.deepcopy(json.loads((audits["fragile"][1] / "report.json").read_text()))
    for run in record["runs"]:
        for item in run["items"]["verbmem_f"]:
            item["generation"] = HOSTILE + (item["generation"] or "")
    page = tmp_path / "report.html"
    page.write_text(render_html(record))
    # no external resource anywhere: every src/href is local or a fragment
    assert not re.search(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', page.read_text())
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S).group(1)
    assert "pwned" not in title and title.startswith("unlearn-audit FAIL")
    assert "<img" not in dom.stdout.lower() and dom.stdout.lower().count("<script") == 1  # the sorter only
    assert 'class="verdict FAIL"' in dom.stdout and "<svg" in dom.stdout
    assert "&lt;script&gt;" in dom.stdout  # the model's text is shown as text
    shot = tmp_path / "report.png"
    result = _chromium(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.stat().st_size > 20_000  # a rendered page, not a blank one


CSP = "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"


def _console_lines(tmp_path: Path, page: Path) -> list[str]:
    """Console messages Chromium logged while loading ``page`` (CSP blocks of requests and scripts included)."""
    result = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_report_loads_without_console_messages_or_requests(audits, tmp_path):
    page = audits["fragile"][1] / "report.html"
    assert _console_lines(tmp_path, page) == []
    # control: the same detector does see a blocked request and a blocked script on a page that has them
    bad = tmp_path / "bad.html"
    bad.write_text(f"<!DOCTYPE html><html><head>{CSP}<title>t</title></head><body>"
                   '<img src="https://example.invalid/x.png"><script>console.error(1)</script></body></html>')
    lines = _console_lines(tmp_path, bad)
    assert any("example.invalid" in line for line in lines) and any("inline script" in line for line in lines)


def test_passage_sorter_reorders_in_the_browser(audits, tmp_path):
    """A test copy of the page clicks the sort buttons (its CSP widened for that one extra script)."""
    html = (audits["fragile"][1] / "report.html").read_text()

    def order_after(click: str) -> list[float]:
        page = tmp_path / f"sorted-{click}.html"
        # a hash in script-src disables 'unsafe-inline' (CSP spec), so the copy swaps the hash for it
        clicked = re.sub(r"script-src '[^']+'", "script-src 'unsafe-inline'", html, count=1).replace(
            "<h2>Settings and provenance</h2>",
            f"<script>document.querySelector('button[data-sort={click}]').click()</script>"
            "<h2>Settings and provenance</h2>", 1)
        page.write_text(clicked)
        dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
        return [float(x) for x in re.findall(r'class="passage" data-gain="[^"]*" data-order="([0-9]+)"', dom)]

    by_order = order_after("order")
    assert len(by_order) > 5 and by_order == sorted(by_order)
    by_gain_orders = order_after("gain")
    assert sorted(by_gain_orders) == by_order and by_gain_orders != by_order  # re-ordered, same passages
