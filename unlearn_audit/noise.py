"""Library noise stays out of the user's terminal: third-party loggers that warn about their own internals
(torchao's optional CUDA kernels, torch's pytree deprecations, bitsandbytes' optional CPU kernel package)
are set to ERROR. Nothing they say there changes a result; errors still come through."""

from __future__ import annotations

import logging

QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes", "bitsandbytes.backends.cpu.ops")


def quiet_third_party() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
