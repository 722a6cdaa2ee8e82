"""Writing an audit's record and its views into the report folder: checked writable before any work, every view
rendered before anything is written, each file replaced atomically, the JSON record last."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, RuntimeFailure
from ..report.record import AuditReport, write_atomic
from ..report.render import RENDERERS


def prepare_out_dir(out_dir: Path) -> None:
    """Fail before any work if the report folder cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".unlearn-audit-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RuntimeFailure(f"cannot write reports into {out_dir}: {exc.strerror}",
                             "pass a writable folder with --out") from None


def _remove_stale_temporaries(out_dir: Path, names: list[str]) -> None:
    """The temporary files a killed write of these reports left (``write_atomic``'s ``.<name>.*.tmp``: a SIGKILL
    between writing one and renaming it leaves it behind); a rerun removes them."""
    for name in names:
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def write_reports(report: AuditReport, out_dir: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """Render ``report`` in each format and write the files atomically; the JSON record goes last."""
    record = report.to_dict()
    rendered = {}
    for fmt in sorted(formats, key=lambda f: f == "json"):
        if fmt not in RENDERERS:
            raise InputError(f"unknown report format '{fmt}'", f"use some of {', '.join(RENDERERS)}")
        name, render = RENDERERS[fmt]
        rendered[fmt] = (out_dir / name, render(record))  # render everything before writing anything
    prepare_out_dir(out_dir)
    _remove_stale_temporaries(out_dir, [path.name for path, _ in rendered.values()])
    for fmt, (path, text) in rendered.items():
        write_atomic(path, text)
    return {fmt: path for fmt, (path, _) in rendered.items()}
