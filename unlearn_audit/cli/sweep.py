"""The sweep command: ``check``'s options for a whole list of checkpoints, and a leaderboard."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from .audit import audit_config, check
from .common import app, err, guarded, out, reporter

SKIPPED = {"model", "revision", "junit", "published", "published_max", "published_files"}
"""``check`` options that name one checkpoint or one CI file, which a sweep does not take."""


def sweep(**options: object) -> None:
    raise typer.Exit(guarded(lambda: _sweep(options)))


def _sweep(o: dict) -> int:
    from ..errors import UsageError
    from ..sweeping import checkpoints_from, checkpoints_from_collection, run_sweep

    if (o["source"] is None) == (o["collection"] is None):
        raise UsageError("give the checkpoints as SOURCE (a file or a glob) or --collection, one of the two",
                         "e.g. unlearn-audit sweep grid.txt, or unlearn-audit sweep --collection ORG/NAME-ID")
    models = checkpoints_from(o["source"]) if o["source"] is not None else checkpoints_from_collection(o["collection"])
    defaults = {p.name: p.default for p in inspect.signature(check).parameters.values() if p.name in SKIPPED}
    config = audit_config({**defaults, **o, "model": models[0]}, screen_only=False)  # check's defaults for the rest
    out_dir = Path(o["out_dir"])
    with reporter() as progress:
        result = run_sweep(config, models, out_dir, reporter=progress, resume=o["resume"], triage=o["triage"],
                           ray_address=o["ray"], gpus_per_task=o["gpus_per_task"],
                           note=lambda text: err.print(text, highlight=False, soft_wrap=True))
    for row in result.rows:
        recovery = (f"largest recovery {row.worst_recovery:.0%} under {row.worst_variant}"
                    if row.worst_recovery is not None else "no recovery defined")
        what = row.error or ("screened only: " if row.screened_only else "") + recovery
        out.print(f"{row.rank:>3}. {row.decision:<12} {row.model}: {what}", highlight=False, soft_wrap=True)
    for path in result.files.values():
        out.print(f"  {path.suffix[1:]:<5} {path}", highlight=False, soft_wrap=True)
    return result.exit_code


def _signature() -> inspect.Signature:
    """``check``'s options (less those naming one checkpoint), SOURCE first, the output folder the sweep's."""
    source = inspect.Parameter("source", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        Optional[str], typer.Argument(metavar="SOURCE", help="A text file with one Hub id or folder per line, or a "
                                                             "quoted glob of folders (or --collection).")])
    collection = inspect.Parameter("collection", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                   annotation=Annotated[Optional[str], typer.Option(
                                       "--collection", metavar="ORG/NAME-ID",
                                       help="The models of a Hub collection instead of SOURCE.")])
    params = [source, collection]
    for p in inspect.signature(check, eval_str=True).parameters.values():
        if p.name in SKIPPED:
            continue
        if p.name == "out_dir":
            p = p.replace(default=Path("unlearn-audit-sweep"), annotation=Annotated[Path, typer.Option(
                "--out", "-o", help="Folder for the leaderboard and one report folder per checkpoint.")])
        params.append(p)
    params += [
        inspect.Parameter("triage", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--triage", help="Screen every checkpoint first (the loss screen under every variant) "
                               "and run the full probes only where the screen does not clear it (its verdict is not "
                               "PASS).")]),
        inspect.Parameter("ray", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option("--ray", metavar="ADDRESS", help="Run each checkpoint as a Ray task: local (a "
                                        "Ray instance started here), auto (the running cluster) or ray://HOST:PORT; "
                                        "needs pip install 'unlearn-audit[ray]'.")]),
        inspect.Parameter("gpus_per_task", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[float], typer.Option("--gpus-per-task", help="GPUs each Ray task asks for (0 to audit on "
                                          "CPUs); default: 1 where the cluster has GPUs, else 0.")]),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=Annotated[
            bool, typer.Option("--resume/--no-resume",
                               help="Keep the records an earlier, interrupted sweep wrote with the same settings.")]),
    ]
    return inspect.Signature(params)


sweep.__signature__ = _signature()
sweep.__annotations__ = {p.name: p.annotation for p in sweep.__signature__.parameters.values()}
sweep.__doc__ = (
    "Audit every checkpoint SOURCE lists with the same forget set, original, reference and variants: the original's "
    "and the reference's runs are computed once and shared (through the result cache), each checkpoint's reports are "
    "written as check writes them (OUT/<checkpoint>/), and leaderboard.html/.md/.json/.csv rank them. A killed sweep "
    "resumes where it stopped; a checkpoint that fails is a row with its error.\n\n"
    "Exit codes: 1 if any checkpoint is FAIL, else 4 if any is INCONCLUSIVE, else the first error's code (2 bad input, "
    "3 runtime failure), else 0.")
app.command("sweep")(sweep)
