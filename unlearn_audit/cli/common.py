"""What every command shares: the Typer app, the consoles, option aliases, and the one place where
failures become a line on stderr and an exit code."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console

from ..errors import AuditError, ExitCode, UsageError
from ..support.noise import debugging
from ..support.progress import PlainReporter, RichReporter, reporter_for

# rich_markup_mode=None: help as plain text, in click's layout (flags without a type column, no markup to decode)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Audit 'unlearned' language models: does quantization bring the forgotten knowledge back?")
spec_app = typer.Typer(help="Write, check and inspect forget-set specs (unlearn_audit.yaml).", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(spec_app, name="spec")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
T = TypeVar("T")

# Shared option types (reused by every command that takes them).
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for report.json, report.md, report.html.")]
QuantOpt = Annotated[list[str], typer.Option(
    "--quant", "-q", metavar="VARIANTS", help="Quantized variants to test, comma-separated: rtn:BITS[:gN][:sym][:head]; see: unlearn-audit quantizers.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Report formats, comma-separated: json,md,html.")]
CacheOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Hugging Face Hub cache to resolve from (default: HF_HUB_CACHE / HF_HOME).")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA, then Apple MPS, then CPU) or a torch device, e.g. cpu or cuda:0.")]
RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", help="Where the miniature is built (default: $UNLEARN_AUDIT_HOME/miniature or ~/.cache/unlearn_audit/miniature).")]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Rebuild the miniature even if a finished build exists.")]
MaxItemsOpt = Annotated[Optional[int], typer.Option(
    "--max-items", min=1, help="Probe only the first N items of each split (a quick look; recorded).")]


def guarded(run: Callable[[], T]) -> T:
    """Run ``run``; turn known failures into one line on stderr and their exit code."""
    try:
        return run()
    except AuditError as exc:
        if debugging():
            raise
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted; no report was written. Fix: run the command again.", soft_wrap=True)
        raise typer.Exit(int(ExitCode.RUNTIME)) from None
    except MemoryError:
        err.print("[bold red]error:[/] out of memory. Fix: lower --batch-size, test fewer variants, or use a "
                  "machine with more memory.", soft_wrap=True)
        raise typer.Exit(int(ExitCode.RUNTIME)) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # the tool broke: never exit 0, never a bare traceback
        if debugging():
            raise
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            err.print("[bold red]error:[/] out of memory while running the model. Fix: lower --batch-size, "
                      "test fewer variants, or use a device with more memory.", soft_wrap=True)
            raise typer.Exit(int(ExitCode.RUNTIME)) from None
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {first}. Fix: re-run with "
                  "UNLEARN_AUDIT_DEBUG=1 for the traceback and report it.", soft_wrap=True, markup=True)
        raise typer.Exit(int(ExitCode.RUNTIME)) from None


def reporter() -> RichReporter | PlainReporter:
    """Bars on a terminal; in a log, a line every ~30 s with the rate and time left."""
    return reporter_for(err)


def _split(values: list[str] | str) -> tuple[str, ...]:
    items = values if isinstance(values, list) else [values]
    return tuple(p.strip() for v in items for p in v.split(",") if p.strip())


def _ci_outputs(record: dict, junit: Optional[Path]) -> None:
    """Write the JUnit file if asked, and append to GitHub's step summary when running there."""
    from ..report.ci import render_junit, render_step_summary
    from ..report.record import write_atomic

    if junit is not None:
        write_atomic(junit, render_junit(record))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(render_step_summary(record))
        except OSError as exc:
            err.print(f"warning: cannot append to GITHUB_STEP_SUMMARY ({exc.strerror})", soft_wrap=True)


def _print_verdict(verdict: dict, files: dict[str, Path]) -> None:
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}[verdict["decision"]]
    out.print(f"[bold {colour}]{verdict['decision']}[/]: {verdict['headline']}", soft_wrap=True)
    for fmt, path in files.items():
        err.print(f"  {fmt:5s} {path}", soft_wrap=True)


def _batch_size(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--batch-size '{text}' is neither a number nor auto", "give e.g. --batch-size 16") from None
