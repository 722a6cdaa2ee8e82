"""The built wheel carries its templates: a non-editable install renders a report."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_templates_and_renders_a_report(audits, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("unlearn_audit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "unlearn_audit/templates/report.html.j2" in names
    assert "unlearn_audit/templates/report.md.j2" in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    record = audits["fragile"][1] / "report.json"
    out = tmp_path / "rendered"
    proc = subprocess.run([str(python), "-c", "import unlearn_audit, sys; print(unlearn_audit.__file__); "
                           "from unlearn_audit.cli import main; sys.argv=['unlearn-audit','report',sys.argv[1],"
                           "'--out',sys.argv[2]]; main()", str(record), str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(env_dir) in proc.stdout.splitlines()[0]  # the installed copy, not the source tree
    assert "FAIL" in (out / "report.html").read_text()
