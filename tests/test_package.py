"""The built wheel carries its templates: a non-editable install renders a report."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def current_site_packages() -> list[str]:
    """Where the interpreter running the tests finds its packages: the virtualenv's own site-packages when
    the tests run in one, the system's otherwise (``site.getsitepackages`` answers for the running prefix)."""
    import site

    return [p for p in site.getsitepackages() if Path(p).is_dir()]


def make_venv_seeing_current_packages(env_dir: Path) -> Path:
    """A fresh venv whose interpreter sees the running interpreter's packages through a ``.pth`` file.
    ``system_site_packages=True`` is not that: inside a virtualenv it exposes the *base* interpreter's
    packages, not the virtualenv's (where ``make test`` installed the dependencies), so the wheel could
    not import typer there. Editable installs in those folders are not activated (a plain path line does
    not process their own ``.pth`` files), so the venv imports the wheel installed into it."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "outer-packages.pth").write_text("\n".join(current_site_packages()) + "\n")
    return python


def test_wheel_ships_templates_and_renders_a_report(audits, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("unlearn_audit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "unlearn_audit/templates/report.html.j2" in names
    assert "unlearn_audit/templates/report.md.j2" in names

    env_dir = tmp_path / "venv"
    python = make_venv_seeing_current_packages(env_dir)
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


def test_the_test_venv_sees_the_running_interpreters_packages(tmp_path):
    """The difference between a virtualenv and the system interpreter: the venv built for the wheel test
    must import what the *running* interpreter has (here typer), wherever make test installed it."""
    python = make_venv_seeing_current_packages(tmp_path / "venv")
    proc = subprocess.run([str(python), "-c", "import typer, sys; print(typer.__file__)"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    import typer

    assert Path(proc.stdout.strip()).resolve() == Path(typer.__file__).resolve()
