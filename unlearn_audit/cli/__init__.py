"""The ``unlearn-audit`` command: a thin adapter from flags to the library API and exit codes.

One module per group of commands (``audit``: check, demo, miniature; ``inspect``: diff, quantizers, probes;
``records``: report, card, compare, schema; ``spec``; ``sweep``); ``common`` holds the app, the option aliases and
the one place where failures become a line and an exit code.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..version import __version__
from . import audit, inspect, records, spec, sweep  # noqa: F401  (registers the commands)
from .common import app, guarded, out

__all__ = ["app", "guarded", "main"]


def _version(value: bool) -> None:
    if value:
        out.print(f"unlearn-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Audit 'unlearned' language models: does quantization bring the forgotten knowledge back?"""


def main() -> None:
    from ..support.noise import quiet_third_party

    quiet_third_party()
    app()
