"""Deprecated alias: the audit moved to :mod:`unlearn_audit.auditing`, a package of stages. Import ``audit`` and
``write_reports`` from :mod:`unlearn_audit` (unchanged) or :mod:`unlearn_audit.auditing`."""

from __future__ import annotations

import warnings

from .auditing import SilentReporter, audit, prepare_out_dir, write_reports

warnings.warn("unlearn_audit.pipeline is deprecated: import audit and write_reports from unlearn_audit "
              "(or unlearn_audit.auditing)", DeprecationWarning, stacklevel=2)

__all__ = ["SilentReporter", "audit", "prepare_out_dir", "write_reports"]
