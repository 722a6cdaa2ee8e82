"""Library noise stays out of the user's terminal: third-party loggers that warn about their own internals
(torchao's optional CUDA kernels, torch's pytree deprecations, bitsandbytes' optional CPU kernel package)
are set to ERROR (nothing they say there changes a result; errors still come through), and what native code
writes straight to the terminal (llama.cpp's per-tensor log, vLLM's start-up and its worker processes) is sent
to /dev/null while it runs, unless ``UNLEARN_AUDIT_DEBUG`` is set."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes", "bitsandbytes.backends.cpu.ops")


def quiet_third_party() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def debugging() -> bool:
    """``UNLEARN_AUDIT_DEBUG`` is set: library output and tracebacks are shown."""
    return bool(os.environ.get("UNLEARN_AUDIT_DEBUG"))


@contextlib.contextmanager
def silenced(fds: tuple[int, ...] = (1, 2), python_stderr: bool = False, active: bool = True) -> Iterator[None]:
    """File descriptors ``fds`` (what C code and child processes write) sent to /dev/null while the block runs, and
    with ``python_stderr`` also Python's ``sys.stderr`` (where a binding forwards a native log). Does nothing when
    ``active`` is false; descriptors that cannot be redirected are left as they are."""
    if not active:
        yield
        return
    saved: list[tuple[int, int]] = []
    with contextlib.ExitStack() as stack:
        if python_stderr:
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        for stream in (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            devnull = None
        if devnull is not None:
            for fd in fds:
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(devnull, fd)
                except OSError:
                    continue
            os.close(devnull)
        try:
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
