"""The documentation stays whole and true: the manual (docs/, MkDocs) builds with ``--strict`` (every page in the nav,
every link and anchor found), the README stays short, links only to files that exist, and its commands work as
printed, with the output it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_the_manual_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "verdict" / "index.html").is_file()


def test_readme_is_short_and_its_links_lead_somewhere():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links if "://" not in link), links
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= {Path(link).name for link in links}, pages - {Path(link).name for link in links}


def _bash(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def test_readme_commands_are_the_ones_checked_here():
    """Every command block is one this file runs, or one CI itself runs: ``make test`` (.ci/run calls it), and the
    install half of the first block (``make test`` installs the same way, editable and with the test extra)."""
    commands = [block.strip() for block in _blocks("bash")]
    assert commands == ["pip install -c constraints.txt . && unlearn-audit demo", "make test",
                        "HF_HUB_CACHE=$(unlearn-audit miniature | sed -n 's/^HF_HUB_CACHE=//p') HF_HUB_OFFLINE=1 \\\n"
                        "  unlearn-audit check miniature/fragile --quant rtn:8,rtn:4,rtn:3"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_demo_runs_as_printed(world, tmp_path):
    command = _blocks("bash")[0].strip().split(" && ", 1)[1]
    done = _bash(command, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAIL: " in done.stdout and "PASS: " in done.stdout


def test_readme_example_prints_what_the_readme_shows(world, tmp_path):
    done = _bash(_blocks("bash")[2], tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stdout.strip() == _blocks("text")[0].strip()
    report = (tmp_path / "unlearn-audit-out" / "report.md").read_text()
    ours = {}  # (metric, variant) -> (recovery, net, interval, status) from the report's recovery table
    for row in re.findall(r"^\| (.+) \|$", report, flags=re.M):
        cells = [c.strip() for c in row.split(" | ")]
        if len(cells) == 8:
            ours[cells[0], cells[1]] = (cells[2], cells[5], cells[6], cells[7])
    shown = [[c.strip() for c in row.split(" | ")] for row in re.findall(r"^\| (.+) \|$", README.read_text(), re.M)]
    shown = [cells for cells in shown if len(cells) == 6 and cells[0] != "metric" and not cells[0].startswith("---")]
    assert len(shown) >= 4
    for metric, variant, recovery, net, interval, status in shown:
        assert ours[metric, variant] == (recovery, net, interval, status), (metric, variant)


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_every_page_is_in_the_nav(page):
    assert f": {page}" in (ROOT / "mkdocs.yml").read_text()
