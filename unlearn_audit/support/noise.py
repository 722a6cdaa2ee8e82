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
import warnings
from collections.abc import Iterator
from typing import Any

QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes", "bitsandbytes.backends.cpu.ops")


def quiet_third_party() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_transformers() -> None:
    """transformers' own progress bars ("Loading checkpoint shards", "Writing model shards") and warnings off: the
    tool's progress display is the one on stderr (a redirected run once carried the shard bars). Imports transformers:
    call it where a model is loaded or saved, not at start-up."""
    from transformers.utils import logging as hf_logging

    quiet_third_party()  # loading a model imports torchao, which warns about its optional CUDA kernels
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # e.g. long-input warnings: truncation is counted in the report


def debugging() -> bool:
    """``UNLEARN_AUDIT_DEBUG`` is set (to anything but ``0``): library output and tracebacks are shown."""
    return os.environ.get("UNLEARN_AUDIT_DEBUG", "") not in ("", "0")


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


@contextlib.contextmanager
def quiet_library_import() -> Iterator[None]:
    """Around the import of a library that prints or reconfigures the process on import (GPT-QModel: a banner on
    stdout, torchao's warnings, the root logger reconfigured, and through its tokenizer helper HF_HOME, HF_HUB_CACHE
    and HF_MODULES_CACHE pointed at /tmp for the whole process): stdout captured, warnings ignored, the root logger
    and every ``HF_*`` variable put back as they were."""
    for name in ("torch.utils._pytree", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hub_settings = {k: v for k, v in os.environ.items() if k.startswith("HF_")}
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.handlers[:], root.level = handlers, level
        for key in [k for k in os.environ if k.startswith("HF_") and k not in hub_settings]:
            del os.environ[key]
        os.environ.update(hub_settings)


def import_peft() -> Any:
    """peft, with GPT-QModel imported first, quietly, where it is installed: peft imports it on first use of an
    adapter (to dispatch GPTQ layers), and that import prints and reconfigures the process (see
    :func:`quiet_library_import`). Raises ImportError when peft is missing."""
    with quiet_library_import():
        import peft

        try:
            import gptqmodel  # noqa: F401
        except ImportError:
            pass
    return peft
