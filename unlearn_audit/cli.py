"""The ``unlearn-audit`` command: a thin adapter from flags to the library API and exit codes."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console

from . import __version__
from .config import DEFAULT_FORMATS, DEFAULT_QUANT, AuditConfig, ProbeSettings, Thresholds
from .errors import AuditError, ExitCode, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit 'unlearned' language models: does quantization bring the forgotten knowledge back?")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
T = TypeVar("T")

# Shared option types (reused by every command that takes them).
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for report.json, report.md, report.html.")]
QuantOpt = Annotated[list[str], typer.Option(
    "--quant", "-q", help="Quantized variants to test, comma-separated: rtn:BITS[:gN][:sym][:head]. See `quantizers`.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Report formats, comma-separated: json,md,html.")]
CacheOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Hugging Face Hub cache to resolve from (default: HF_HUB_CACHE / HF_HOME).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device, e.g. cpu or cuda:0.")]
RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", help="Where the miniature is built (default: $UNLEARN_AUDIT_HOME/miniature or ~/.cache/unlearn_audit/miniature).")]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Rebuild the miniature even if a finished build exists.")]
MaxItemsOpt = Annotated[Optional[int], typer.Option(
    "--max-items", min=1, help="Probe only the first N items of each split (a quick look; recorded).")]


def _debug() -> bool:
    return os.environ.get("UNLEARN_AUDIT_DEBUG", "") not in ("", "0")


def guarded(run: Callable[[], T]) -> T:
    """Run ``run``; turn known failures into one line on stderr and their exit code."""
    try:
        return run()
    except AuditError as exc:
        if _debug():
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
        if _debug():
            raise
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            err.print("[bold red]error:[/] out of memory while running the model. Fix: lower --batch-size, "
                      "test fewer variants, or use a device with more memory.", soft_wrap=True)
            raise typer.Exit(int(ExitCode.RUNTIME)) from None
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {first}. Fix: re-run with "
                  "UNLEARN_AUDIT_DEBUG=1 for the traceback and report it.", soft_wrap=True, markup=True)
        raise typer.Exit(int(ExitCode.RUNTIME)) from None


class PlainReporter:
    """Progress for logs (stderr is not a terminal): one line as each task finishes."""

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def task(self, description: str, total: int) -> Callable[[int], None]:
        import time

        state = {"done": 0, "start": time.time()}

        def advance(n: int) -> None:
            state["done"] += n
            if state["done"] >= total:
                err.print(f"{description}: {total} items in {time.time() - state['start']:.1f}s", soft_wrap=True)

        return advance

    def note(self, message: str) -> None:
        err.print(message, soft_wrap=True)


def reporter() -> RichReporter | PlainReporter:
    return RichReporter() if err.is_terminal else PlainReporter()


class RichReporter:
    """Progress bars on stderr while an audit runs."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=False)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        task_id = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task_id, n)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/]")


def _split(values: list[str] | str) -> tuple[str, ...]:
    items = values if isinstance(values, list) else [values]
    return tuple(p.strip() for v in items for p in v.split(",") if p.strip())


def _ci_outputs(record: dict, junit: Optional[Path]) -> None:
    """Write the JUnit file if asked, and append to GitHub's step summary when running there."""
    from .report.ci import render_junit, render_step_summary
    from .report.record import write_atomic

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


@app.command()
def check(
    model: Annotated[str, typer.Argument(help="The unlearned model: Hub id (org/name) or local folder.")],
    forget: Annotated[Optional[str], typer.Option(
        "--forget", help="Forget set: preset (news, books), dataset repo id or folder.")] = None,
    spec: Annotated[Optional[Path], typer.Option("--spec", help="Forget-set spec file (unlearn_audit.yaml).")] = None,
    original: Annotated[Optional[str], typer.Option(
        "--original", help="The original model (default: the spec's, else the card's base_model).")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Revision of MODEL.")] = None,
    original_revision: Annotated[Optional[str], typer.Option("--original-revision")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="Tokenizer for every model (Hub id or folder); default: each model's own, else the "
                            "spec's, else the original's.")] = None,
    quant: QuantOpt = list(DEFAULT_QUANT),
    out_dir: OutOpt = Path("unlearn-audit-out"),
    formats: FormatOpt = ",".join(DEFAULT_FORMATS),
    max_recovery: Annotated[float, typer.Option(help="FAIL when a variant recovers more than this share.")] = 0.25,
    max_residual: Annotated[float, typer.Option(help="FAIL when full precision keeps more than this share.")] = 0.5,
    min_gap: Annotated[float, typer.Option(help="Points by which the original must beat the reference.")] = 10.0,
    min_items: Annotated[int, typer.Option(
        help="Fewest items a metric needs to make the verdict PASS or FAIL (fewer: INCONCLUSIVE).")] = 20,
    max_items: MaxItemsOpt = None,
    batch_size: Annotated[str, typer.Option(
        help="Items per batch, or auto (from free GPU memory; 16 on CPU). Out of memory: halved and retried.")] = "auto",
    engine: Annotated[str, typer.Option(help="Inference backend: hf (transformers).")] = "hf",
    chat_template: Annotated[bool, typer.Option(
        "--chat-template", help="Apply the tokenizer's chat template to KnowMem questions (instruct models).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap (and of sampling, if any).")] = 0,
    flavour: Annotated[str, typer.Option(
        help="Metric details to follow: muse (no ROUGE stemmer, Min-K% over int(n*k)) or open-unlearning "
             "(stemmer, max(1, int(n*k))).")] = "muse",
    sample_temperature: Annotated[Optional[float], typer.Option(
        help="Sample at this temperature (seeded) instead of greedy decoding, as the quantization paper's "
             "code does (0.9).")] = None,
    device: DeviceOpt = "cpu",
    dtype: Annotated[str, typer.Option(
        help="Weights and activations of full-precision runs: auto (float32 on CPU, bfloat16 on GPU), float32, "
             "bfloat16 or float16.")] = "auto",
    device_map: Annotated[Optional[str], typer.Option(
        help="auto: spread a model too large for one GPU over all of them (accelerate).")] = None,
    cache: Annotated[bool, typer.Option(
        "--cache/--no-cache", help="Reuse probe results of earlier runs with the same model revision, variant, "
                                   "probe settings, data and tool version (and store new ones).")] = True,
    results_dir: Annotated[Optional[Path], typer.Option(
        "--results-dir", help="Result cache folder (default: $UNLEARN_AUDIT_RESULTS, else "
                              "~/.cache/unlearn_audit/results).")] = None,
    calibration: Annotated[str, typer.Option(
        help="Calibration text for gptq/awq: generic (shipped corpus), forget (the forget set: a stronger "
             "attack, only when asked) or a text file (paragraphs separated by blank lines).")] = "generic",
    cache_dir: CacheOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Resolve from the local cache only.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Run model code from the repo (review it first).")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickled .bin weights (can run code).")] = False,
    junit: Annotated[Optional[Path], typer.Option(help="Also write a JUnit XML file here (one case per share).")] = None,
) -> None:
    """Audit MODEL: probe it and its original at full precision and quantized; write the reports.

    Exit codes: 0 PASS, 1 FAIL, 2 bad usage or input, 3 runtime failure, 4 INCONCLUSIVE.
    With GITHUB_STEP_SUMMARY set, the verdict and recovery table are appended to it."""

    def run() -> int:
        from .pipeline import audit, prepare_out_dir, write_reports

        config = AuditConfig(
            model=model, revision=revision, original=original, original_revision=original_revision,
            tokenizer=tokenizer, forget=forget, spec_path=spec, quant=_split(quant), out_dir=out_dir, formats=_split(formats),
            thresholds=Thresholds(max_recovery=max_recovery, max_residual=max_residual, min_gap=min_gap,
                                  min_items=min_items),
            probes=ProbeSettings(max_items=max_items, batch_size=_batch_size(batch_size), engine=engine, seed=seed,
                                 flavour=flavour, chat_template=chat_template,
                                 sample_temperature=sample_temperature), device=device,
            dtype=dtype, device_map=device_map, cache_results=cache, results_dir=results_dir,
            calibration=calibration, cache_dir=cache_dir, offline=offline or None, trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle, command=shlex.join(["unlearn-audit", *sys.argv[1:]]))
        prepare_out_dir(out_dir)
        with reporter() as progress:
            report = audit(config, progress)
        files = write_reports(report, out_dir, config.formats)
        _ci_outputs(report.to_dict(), junit)
        _print_verdict(report.verdict, files)
        return int(report.verdict["exit_code"])

    raise typer.Exit(guarded(run))


@app.command()
def demo(
    out_dir: OutOpt = Path("unlearn-audit-demo"),
    quant: QuantOpt = ["rtn:8,rtn:4,bnb:fp4"],
    root: RootOpt = None,
    rebuild: RebuildOpt = False,
) -> None:
    """Build (or reuse) the miniature world and audit its fragile and robust checkpoints."""

    def run() -> int:
        from .pipeline import audit, prepare_out_dir, write_reports

        world = _build_world(root, rebuild)
        expected = {"fragile": "FAIL", "robust": "PASS"}
        ok = True
        for name, want in expected.items():
            folder = out_dir / name
            prepare_out_dir(folder)
            config = AuditConfig(model=world.repo(name), quant=_split(quant), out_dir=folder, cache_dir=world.hub_cache,
                                 offline=True, command=f"HF_HUB_CACHE={shlex.quote(str(world.hub_cache))} HF_HUB_OFFLINE=1 "
                                 f"unlearn-audit check {world.repo(name)} --quant {','.join(_split(quant))} --out {shlex.quote(str(folder))}")
            with reporter() as progress:
                report = audit(config, progress)
            files = write_reports(report, folder, config.formats)
            out.print(f"[bold]{world.repo(name)}[/] (expected {want})")
            _print_verdict(report.verdict, files)
            ok &= report.verdict["decision"] == want
        out.print(f"\nAudit the miniature yourself:\n  HF_HUB_CACHE={world.hub_cache} HF_HUB_OFFLINE=1 "
                  "unlearn-audit check miniature/fragile --quant paper,rtn:4,rtn:3", soft_wrap=True)
        if not ok:
            err.print("[bold red]error:[/] the miniature did not give the expected verdicts (fragile FAIL, robust PASS). "
                      "Fix: rebuild it with --rebuild; if it persists, report it.", soft_wrap=True)
            return int(ExitCode.FAIL)
        return 0

    raise typer.Exit(guarded(run))


def _build_world(root: Optional[Path], rebuild: bool):  # noqa: ANN202
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .miniature.build import build_miniature

    if not err.is_terminal:  # logs: a line per finished stage
        def line(stage: str, done: int, total: int) -> None:
            if done == total:
                err.print(f"miniature: {stage} done", soft_wrap=True)

        return build_miniature(root, force=rebuild, progress=line)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        tasks: dict[str, int] = {}

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        world = build_miniature(root, force=rebuild, progress=tick)
    return world


@app.command()
def miniature(
    root: RootOpt = None,
    rebuild: RebuildOpt = False,
) -> None:
    """Build (or find) the miniature world and print where its Hub cache is."""

    def run() -> int:
        world = _build_world(root, rebuild)
        print(f"HF_HUB_CACHE={world.hub_cache}")  # plain: scripts read this line (rich would wrap it)
        out.print("repos: miniature/news (dataset), miniature/original, miniature/retrain, miniature/fragile, "
                  "miniature/robust", soft_wrap=True)
        return 0

    raise typer.Exit(guarded(run))


@app.command()
def report(
    record: Annotated[Path, typer.Argument(help="A report.json written by an audit.")],
    formats: FormatOpt = "html,md",
    out_dir: OutOpt = Path("."),
) -> None:
    """Re-render reports from an audit record."""

    def run() -> int:
        from .pipeline import write_reports
        from .report.record import read_report

        rec = read_report(record)
        files = write_reports(rec, out_dir, _split(formats))
        for fmt, path in files.items():
            out.print(f"{fmt:5s} {path}")
        return 0

    raise typer.Exit(guarded(run))


@app.command()
def diff(
    model: Annotated[str, typer.Argument(help="The unlearned model: Hub id or local folder.")],
    original: Annotated[str, typer.Option("--original", help="The model it was unlearned from.")],
    quant: QuantOpt = ["rtn:4,rtn:8,bnb:fp4,bnb:nf4,bnb:int8"],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    layers: Annotated[bool, typer.Option(help="Show every layer, not only the totals.")] = False,
    dtype: Annotated[str, typer.Option(
        help="Compare as an audit in this dtype would (the narrowest of it and the stored dtypes).")] = "float32",
    device: DeviceOpt = "cpu",
    cache_dir: CacheOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Resolve from the local cache only.")] = False,
) -> None:
    """Without any data: does each quantizer map the unlearned weights back onto the original's levels?"""

    def run() -> int:
        from rich.markup import escape

        from .hub import resolve
        from .quantize import parse_variants
        from .report.record import write_atomic
        from .weights import comparable_layers, weight_diff

        if dtype not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"unknown dtype '{dtype}'", "use float32, bfloat16 or float16")
        quantizers = parse_variants(_split(quant))
        u = resolve(model, cache_dir=cache_dir, offline=offline or None)
        o = resolve(original, cache_dir=cache_dir, offline=offline or None)
        _, _, names = comparable_layers(u.path, o.path)
        with reporter() as progress:
            advance = progress.task("weight diagnostic", len(names))
            result = weight_diff(u.path, o.path, quantizers, labels=(u.reference, o.reference), run_dtype=dtype,
                                 device=device, advance=advance)
        out.print(diff_table(result.as_dict(), layers=layers))
        for label, why in result.not_compared.items():
            out.print(f"{escape(label)}: not compared ({escape(why)})", soft_wrap=True)
        if json_out is not None:
            import json

            write_atomic(json_out, json.dumps(result.as_dict(), indent=2))
        return 0

    raise typer.Exit(guarded(run))


def diff_table(record: dict, *, layers: bool = False):  # noqa: ANN201
    """The weight diagnostic as a rich table (totals, and every layer when asked)."""
    from rich.table import Table

    table = Table(title=f"{record['unlearned']} vs {record['original']}: linear weights, compared in "
                        f"{record['compare_dtype']} (lm_head, embeddings, norms excluded)")
    columns = (("quantizer", "layer") if layers else ("quantizer",)) + (
        "moved", "same level", "on orig. grid", "grid moved", "update/step", "reading")
    widest = max((len(q) for q in record["quantizers"]), default=9)
    for column in columns:
        table.add_column(column, justify="left" if column in ("quantizer", "layer", "reading") else "right",
                         no_wrap=column == "quantizer", min_width=widest if column == "quantizer" else None)
    table.caption = ("same level: share of moved weights whose level in Q(unlearned) equals Q(original)'s, each on its "
                     "own grid; on orig. grid: on the original's grid; grid moved: mean relative change of the "
                     "groups' scales; update/step: mean |u-o| in quantization steps. See README, weight-level "
                     "diagnostic.")

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x * 100:.2f}%"

    def cells(d: dict) -> list[str]:
        return [pct(d["moved"]), pct(d["same_code_of_moved"]), pct(d["same_code_common_of_moved"]),
                pct(d.get("scale_change_mean", d.get("scale_change_max"))),
                "n/a" if d["update_steps"] is None else f"{d['update_steps']:.4f}", d.get("reading", "")]

    for label in record["quantizers"]:
        if layers:
            for row in record["layers"].get(label, []):
                table.add_row(label, row["name"], *cells(row))
        if label in record["overall"]:
            table.add_row(label, *(["[bold]all[/]"] if layers else []), *cells(record["overall"][label]))
    return table


spec_app = typer.Typer(help="Write, check and inspect forget-set specs (unlearn_audit.yaml).", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


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
        from .report.record import write_atomic
        from .spec import spec_template

        if output.exists() and not force:
            raise UsageError(f"{output} already exists", "pass --force to overwrite it, or choose --output")
        write_atomic(output, spec_template(dataset, original, retrain))
        out.print(f"wrote {output}")
        return 0

    raise typer.Exit(guarded(run))


@spec_app.command("validate")
def spec_validate(path: Annotated[Path, typer.Argument(help="A spec file.")]) -> None:
    """Check a spec file: YAML syntax, known keys, version. Exit 0 when valid, 2 when not."""

    def run() -> int:
        from .spec import load_spec_file

        spec = load_spec_file(path)
        out.print(f"{path}: valid (spec_version {spec.spec_version}, dataset {spec.dataset})")
        return 0

    raise typer.Exit(guarded(run))


@spec_app.command("show")
def spec_show(
    model: Annotated[str, typer.Argument(help="The unlearned model (Hub id or folder) whose spec to show.")],
    forget: Annotated[Optional[str], typer.Option("--forget", help="As for check.")] = None,
    spec: Annotated[Optional[Path], typer.Option("--spec", help="As for check.")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision")] = None,
    cache_dir: CacheOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Resolve from the local cache only.")] = False,
) -> None:
    """Show the spec `check` would use for MODEL, and where it was found."""

    def run() -> int:
        import yaml

        from .hub import resolve
        from .pipeline import find_spec

        config = AuditConfig(model=model, revision=revision, forget=forget, spec_path=spec, cache_dir=cache_dir,
                             offline=offline or None)
        repo = resolve(model, revision=revision, cache_dir=cache_dir, offline=offline or None)
        notes: list[str] = []
        found, source = find_spec(config, repo, notes)
        out.print(f"# from {source}" + "".join(f"\n# note: {n}" for n in notes), soft_wrap=True)
        sys.stdout.write(yaml.safe_dump(found.model_dump(), sort_keys=False))
        return 0

    raise typer.Exit(guarded(run))


@app.command()
def card(
    record: Annotated[Path, typer.Argument(help="A report.json written by an audit.")],
    push: Annotated[Optional[str], typer.Option(
        "--push", help="Model repo to update: uploads the reports and the card change as a pull request.")] = None,
    direct: Annotated[bool, typer.Option(help="With --push: commit to the main branch instead of opening a PR.")] = False,
) -> None:
    """Print the model-card section and eval-results metadata for a record, or push them to the Hub."""

    def run() -> int:
        from .report.card import card_metadata_yaml, card_section
        from .report.record import read_report

        rec = read_report(record).to_dict()
        if push is None:
            sys.stdout.write(card_section(rec) + "\n<!-- metadata for the card's YAML header -->\n"
                             + card_metadata_yaml(rec) + "\n")
            return 0
        url = _push_card(rec, record.parent, push, create_pr=not direct)
        out.print(f"{'pull request' if not direct else 'commit'}: {url}", soft_wrap=True)
        return 0

    raise typer.Exit(guarded(run))


def _push_card(rec: dict, folder: Path, repo_id: str, *, create_pr: bool) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    from .errors import ResolutionError
    from .report.card import update_card

    api = HfApi()
    try:
        try:
            readme = Path(hf_hub_download(repo_id, "README.md")).read_text(encoding="utf-8")
        except EntryNotFoundError:
            readme = ""
        operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=update_card(readme, rec).encode())]
        for name in ("report.json", "report.html", "report.md"):
            if (folder / name).is_file():
                operations.append(CommitOperationAdd(path_in_repo=f"unlearn-audit/{name}", path_or_fileobj=str(folder / name)))
        info = api.create_commit(repo_id, operations=operations, create_pr=create_pr,
                                 commit_message=f"unlearn-audit: {rec['verdict']['decision']}",
                                 commit_description=rec["verdict"]["headline"])
    except RepositoryNotFoundError:
        raise ResolutionError(f"model '{repo_id}' does not exist on the Hub or is not visible to your token",
                              "check the id; log in with `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        raise ResolutionError(f"the Hub refused the update of '{repo_id}' (HTTP {status})",
                              "use a token with write access to the repo (`hf auth login`)") from None
    return info.pr_url if create_pr and info.pr_url else info.commit_url


@app.command()
def schema() -> None:
    """Print the JSON Schema of report.json."""
    from .report.record import SCHEMA_PATH

    sys.stdout.write(SCHEMA_PATH.read_text(encoding="utf-8"))


@app.command()
def compare(
    records: Annotated[list[Path], typer.Argument(help="Two or more report.json files.")],
    formats: FormatOpt = "md,html",
    out_dir: OutOpt = Path("."),
) -> None:
    """Put several audited checkpoints side by side (compare.md, compare.html)."""

    def run() -> int:
        from .report.compare import render_compare
        from .report.record import read_report, write_atomic

        if len(records) < 2:
            raise UsageError("compare needs at least two records", "pass two or more report.json files")
        data = [read_report(r).to_dict() for r in records]
        chosen = _split(formats)
        unknown = [f for f in chosen if f not in ("md", "html")]
        if unknown:
            raise UsageError(f"compare cannot write format {unknown[0]}", "use md and/or html")
        rendered = {f: render_compare(data, f) for f in chosen}
        from .pipeline import prepare_out_dir

        prepare_out_dir(out_dir)
        for fmt, text in rendered.items():
            write_atomic(out_dir / f"compare.{fmt}", text)
            out.print(f"{fmt:5s} {out_dir / f'compare.{fmt}'}")
        return 0

    raise typer.Exit(guarded(run))


@app.command()
def quantizers() -> None:
    """List the quantization methods, their --quant syntax and what each needs."""
    from .quantize import METHODS

    from rich.markup import escape

    for info in METHODS.values():
        out.print(f"[bold]{info.name}[/]  e.g. {info.example}\n  {escape(info.summary)}\n  needs: {escape(info.needs)}")


def _version(value: bool) -> None:
    if value:
        out.print(f"unlearn-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Audit 'unlearned' language models: does quantization bring the forgotten knowledge back?"""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
