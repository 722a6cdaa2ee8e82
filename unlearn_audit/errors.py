"""One exception hierarchy for every user-facing failure.

Each class carries its process exit code; each instance carries a one-line message naming the
problem and a ``fix`` naming what to do about it. The CLI prints ``str(error)`` (message and fix on
one line) and exits with ``error.exit_code``; tracebacks appear only with ``UNLEARN_AUDIT_DEBUG=1``.

Exit codes (documented in README.md and docs/ci.md; a CI gate depends on them):

* 0 PASS, 1 FAIL, 4 INCONCLUSIVE: verdicts, see :mod:`unlearn_audit.analysis.verdict`;
* 2 bad usage or bad input (:class:`UsageError`, :class:`InputError`);
* 3 runtime failure (:class:`RuntimeFailure`).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``unlearn-audit`` command."""

    PASS = 0
    FAIL = 1
    BAD_INPUT = 2
    RUNTIME = 3
    INCONCLUSIVE = 4


class AuditError(Exception):
    """Base class: a failure the user can act on.

    Attributes:
        message: what went wrong, one sentence.
        fix: what the user should do about it, one sentence (may be empty).
    """

    exit_code: ExitCode = ExitCode.RUNTIME

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.message}."
        if self.fix:
            text += f" Fix: {self.fix}."
        return " ".join(text.split())  # always a single line


class UsageError(AuditError):
    """Bad flags or a bad combination of flags (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class InputError(AuditError):
    """Bad input: spec, data, model files, unsupported settings (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class UnsafeModelError(InputError):
    """A checkpoint that would need pickled weights or remote code, not allowed (exit 2)."""


class ResolutionError(InputError):
    """A model or dataset reference that cannot be resolved (missing repo, revision, offline) (exit 2)."""


class RuntimeFailure(AuditError):
    """The audit broke while running: load, out of memory, disk, interrupted (exit 3)."""

    exit_code = ExitCode.RUNTIME


class QuantizationError(RuntimeFailure):
    """A quantizer did not do what it claims (no layer quantized, too many levels) (exit 3)."""


class GridNotApplicable(QuantizationError):
    """A quantizer's grid cannot take one weight matrix's shape (its library leaves that matrix unquantized):
    the weight diagnostic leaves the matrix out for that quantizer and says so."""
