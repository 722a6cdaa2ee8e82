"""Commands over written records: report, card, compare, schema."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .common import FormatOpt, OutOpt, _split, app, guarded, out


@app.command()
def report(
    record: Annotated[Path, typer.Argument(metavar="RECORD", help="A report.json written by an audit.")],
    formats: FormatOpt = "html,md",
    out_dir: OutOpt = Path("."),
) -> None:
    """Re-render reports from an audit record."""

    def run() -> int:
        from ..auditing import write_reports
        from ..report.record import read_report

        rec = read_report(record)
        files = write_reports(rec, out_dir, _split(formats))
        for fmt, path in files.items():
            out.print(f"{fmt:5s} {path}")
        return 0

    raise typer.Exit(guarded(run))


@app.command()
def card(
    record: Annotated[Path, typer.Argument(metavar="RECORD", help="A report.json written by an audit.")],
    push: Annotated[Optional[str], typer.Option(
        "--push", help="Model repo to update: uploads the reports and the card change as a pull request.")] = None,
    direct: Annotated[bool, typer.Option(help="With --push: commit to the main branch instead of opening a PR.")] = False,
) -> None:
    """Print the model-card section and eval-results metadata for a record, or push them to the Hub."""

    def run() -> int:
        from ..report.card import card_metadata_yaml, card_section
        from ..report.record import read_report

        rec = read_report(record).to_dict()
        if push is None:
            sys.stdout.write(card_section(rec) + "\n<!-- metadata for the card's YAML header -->\n"
                             + card_metadata_yaml(rec) + "\n")
            return 0
        from ..report.card import push_card

        url = push_card(rec, record.parent, push, create_pr=not direct)
        out.print(f"{'pull request' if not direct else 'commit'}: {url}", soft_wrap=True)
        return 0

    raise typer.Exit(guarded(run))


@app.command()
def schema() -> None:
    """Print the JSON Schema of report.json."""
    from ..report.record import SCHEMA_PATH

    sys.stdout.write(SCHEMA_PATH.read_text(encoding="utf-8"))


@app.command()
def compare(
    records: Annotated[list[Path], typer.Argument(metavar="RECORDS", help="Two or more report.json files.")],
    formats: FormatOpt = "md,html",
    out_dir: OutOpt = Path("."),
) -> None:
    """Put several audited checkpoints side by side (compare.md, compare.html)."""

    def run() -> int:
        from ..report.compare import render_compare
        from ..report.record import read_report, write_atomic

        if len(records) < 2:
            raise UsageError("compare needs at least two records", "pass two or more report.json files")
        data = [read_report(r).to_dict() for r in records]
        chosen = _split(formats)
        unknown = [f for f in chosen if f not in ("md", "html")]
        if unknown:
            raise UsageError(f"compare cannot write format {unknown[0]}", "use md and/or html")
        rendered = {f: render_compare(data, f) for f in chosen}
        from ..auditing import prepare_out_dir

        prepare_out_dir(out_dir)
        for fmt, text in rendered.items():
            write_atomic(out_dir / f"compare.{fmt}", text)
            out.print(f"{fmt:5s} {out_dir / f'compare.{fmt}'}")
        return 0

    raise typer.Exit(guarded(run))
