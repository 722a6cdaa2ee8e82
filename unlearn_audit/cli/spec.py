"""spec init, validate and show."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import AuditConfig
from ..errors import UsageError
from .common import CacheOpt, guarded, out, spec_app


@spec_app.command("init")
def spec_init(
    dataset: Annotated[str, typer.Option(help="Dataset repo id or folder holding the forget set (MUSE layout).")],
    original: Annotated[Optional[str], typer.Option(help="The model it was unlearned from.")] = None,
    retrain: Annotated[Optional[str], typer.Option(help="A model trained without the forget set.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write it.")] = Path("unlearn_audit.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented spec with MUSE's default configs and splits."""

    def run() -> int:
        from ..inputs.spec import spec_template
        from ..report.record import write_atomic

        if output.exists() and not force:
            raise UsageError(f"{output} already exists", "pass --force to overwrite it, or choose --output")
        write_atomic(output, spec_template(dataset, original, retrain))
        out.print(f"wrote {output}")
        return 0

    raise typer.Exit(guarded(run))


@spec_app.command("validate")
def spec_validate(path: Annotated[Path, typer.Argument(metavar="PATH", help="A spec file.")]) -> None:
    """Check a spec file: YAML syntax, known keys, version. Exit 0 when valid, 2 when not."""

    def run() -> int:
        from ..inputs.spec import load_spec_file

        spec = load_spec_file(path)
        out.print(f"{path}: valid (spec_version {spec.spec_version}, dataset {spec.dataset})")
        return 0

    raise typer.Exit(guarded(run))


@spec_app.command("show")
def spec_show(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="The unlearned model (Hub id or folder) whose spec to show.")],
    forget: Annotated[Optional[str], typer.Option("--forget", help="As for check.")] = None,
    spec: Annotated[Optional[Path], typer.Option("--spec", help="As for check.")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision")] = None,
    cache_dir: CacheOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Resolve from the local cache only.")] = False,
) -> None:
    """Show the spec unlearn-audit check would use for MODEL, and where it was found."""

    def run() -> int:
        import yaml

        from ..auditing.planning import find_spec
        from ..inputs.hub import resolve

        config = AuditConfig(model=model, revision=revision, forget=forget, spec_path=spec, cache_dir=cache_dir,
                             offline=offline or None)
        repo = resolve(model, revision=revision, cache_dir=cache_dir, offline=offline or None)
        notes: list[str] = []
        found, source = find_spec(config, repo, notes)
        out.print(f"# from {source}" + "".join(f"\n# note: {n}" for n in notes), soft_wrap=True)
        sys.stdout.write(yaml.safe_dump(found.model_dump(), sort_keys=False))
        return 0

    raise typer.Exit(guarded(run))
