"""The architecture holds: every module imports on its own, and the contracts in ``pyproject.toml``
(``[tool.importlinter]``: the layers, no import circles) are kept, checked by import-linter's own ``lint-imports``;
a circle or an upward import planted in a copy of the package breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_imports_on_its_own():
    """Each module imported into an interpreter holding none of the package's other modules (an import circle or a
    module that works only after another was imported fails here)."""
    code = """
import importlib, pkgutil, sys, warnings
warnings.simplefilter("ignore")
import unlearn_audit
names = sorted(m.name for m in pkgutil.walk_packages(unlearn_audit.__path__, "unlearn_audit."))
failed = []
for name in ["unlearn_audit", *names]:
    for loaded in [k for k in sys.modules if k == "unlearn_audit" or k.startswith("unlearn_audit.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    count, *failed = done.stdout.strip().splitlines()
    assert int(count) > 60 and not failed, failed


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           f"sys.exit(lint_imports(config_filename={str(root / 'pyproject.toml')!r}, no_cache=True, "
                           "no_logo=True))"], capture_output=True, text=True, cwd=root, env=env, timeout=300)


def test_the_layers_and_no_circles_are_kept():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("report/names.py", "from . import render", "No import circles"),  # a circle inside one package
    ("inputs/hub.py", "from ..auditing import runs", "Layers"),  # an input reaching up into the audit
])
def test_a_planted_circle_or_upward_import_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "unlearn_audit", tmp_path / "unlearn_audit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "unlearn_audit" / module
    planted.write_text(planted.read_text() + f"\n{line}  # planted\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    verdicts = [row for row in done.stdout.splitlines() if row.startswith(broken) and row.endswith(("KEPT", "BROKEN"))]
    assert verdicts and all(row.endswith("BROKEN") for row in verdicts), done.stdout[-3000:]


def test_the_public_api_is_where_it_was():
    """``unlearn_audit.audit``, ``write_reports``, ``AuditConfig`` and the record types unchanged; the old
    ``unlearn_audit.pipeline`` still works and says where the audit moved."""
    import importlib
    import warnings

    import unlearn_audit
    from unlearn_audit import auditing
    from unlearn_audit.report import record

    assert unlearn_audit.audit is auditing.audit and unlearn_audit.write_reports is auditing.write_reports
    assert unlearn_audit.AuditReport is record.AuditReport and unlearn_audit.read_report is record.read_report
    sys.modules.pop("unlearn_audit.pipeline", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = importlib.import_module("unlearn_audit.pipeline")
    assert pipeline.audit is auditing.audit and pipeline.write_reports is auditing.write_reports
    assert any(issubclass(w.category, DeprecationWarning) and "unlearn_audit.auditing" in str(w.message)
               for w in caught)
