"""unlearn-audit: does quantization bring back what an "unlearned" language model forgot?

Library API::

    from unlearn_audit import AuditConfig, audit, write_reports
    report = audit(AuditConfig(model="org/unlearned", forget="news"))
    write_reports(report, report_dir, ("json", "md", "html"))
    report.verdict["decision"]  # "PASS" | "FAIL" | "INCONCLUSIVE"
"""

from __future__ import annotations

from .config import AuditConfig, ProbeSettings, Thresholds  # noqa: E402
from .errors import AuditError, ExitCode  # noqa: E402
from .version import __version__


def __getattr__(name: str):  # noqa: ANN202 - lazy: importing the package stays cheap (no torch)
    if name in ("audit", "write_reports"):
        from . import auditing as _audit

        return getattr(_audit, name)
    if name in ("AuditReport", "read_report"):
        from .report import record

        return getattr(record, name)
    raise AttributeError(name)


__all__ = ["AuditConfig", "AuditError", "AuditReport", "ExitCode", "ProbeSettings", "Thresholds", "__version__",
           "audit", "read_report", "write_reports"]
