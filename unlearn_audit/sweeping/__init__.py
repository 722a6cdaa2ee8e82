"""Audit a whole grid of checkpoints with the same forget set, original, reference and variants: one ``check`` per
checkpoint, the original's and the reference's runs computed once and shared through the result cache (keyed as for
any audit), each record written as ``check`` writes it, a killed sweep resumed where it stopped, a checkpoint that
fails kept as a row with its one-line error, and a ranked leaderboard over all of them."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..auditing import Reporter, SilentReporter, audit, write_reports
from ..config import AuditConfig
from ..errors import AuditError, ExitCode, InputError, UsageError
from ..report.leaderboard import RENDERERS, LeaderboardRow, error_row, rank_rows, row_from_record, sweep_exit_code
from ..report.record import read_report, write_atomic

KEY_FILE = ".sweep-key"
"""Beside a checkpoint's record: the key of the settings it was audited with (a resumed sweep reuses it if equal)."""


def checkpoints_from(source: str) -> list[str]:
    """The checkpoints a sweep audits: a text file with one Hub id or folder per line (``#`` comments and blank
    lines ignored), or a glob of folders (``runs/*/checkpoint-final``). Duplicates are an error."""
    path = Path(source).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the list of checkpoints {source}: {exc}",
                             "give a text file with one Hub id or folder per line") from None
        items = [line.split("#", 1)[0].strip() for line in lines]
        items = [item for item in items if item]
    elif any(ch in source for ch in "*?["):
        items = sorted(p for p in glob.glob(str(path)) if Path(p).is_dir())
    else:
        raise UsageError(f"'{source}' is neither a file listing checkpoints nor a glob of folders",
                         "give a text file (one Hub id or folder per line) or a quoted glob such as 'runs/*'")
    if not items:
        raise InputError(f"{source} names no checkpoint", "list one Hub id or folder per line, or fix the glob")
    seen = set()
    for item in items:
        if item in seen:
            raise InputError(f"{item} is listed twice in {source}", "list each checkpoint once")
        seen.add(item)
    return items


def checkpoints_from_collection(slug: str) -> list[str]:
    """The models of a Hub collection (``ORG/NAME-ID`` as in its address), in the collection's order."""
    from huggingface_hub import get_collection

    try:
        collection = get_collection(slug)
    except Exception as exc:  # noqa: BLE001 - network, offline mode, a wrong or private slug: one line each
        raise InputError(f"cannot read the Hub collection {slug} ({type(exc).__name__})",
                         "give its slug as in its address (ORG/NAME-ID), be online (not HF_HUB_OFFLINE), and set "
                         "HF_TOKEN for a private one; or list the models in a file") from None
    models = [item.item_id for item in sorted(collection.items, key=lambda item: item.position)
              if item.item_type == "model"]
    if not models:
        raise InputError(f"the Hub collection {slug} holds no model", "give a collection of models, or a file")
    return models


def folder_name(model: str, taken: set[str]) -> str:
    """A report folder name for a checkpoint, unique in the sweep: a local folder's own name, a Hub id with ``__``
    for its slash; unsafe characters replaced."""
    local = Path(model).expanduser()
    text = local.name if local.is_dir() else model.strip("/").replace("/", "__")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "checkpoint"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def settings_key(config: AuditConfig) -> str:
    """What a checkpoint's record depends on (not where it is written or how the command was typed)."""
    where = ("out_dir", "command", "results_dir", "cache_results", "scratch_dir")  # not what the figures depend on
    record = {k: v for k, v in config.to_record().items() if k not in where}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Sweep:
    """A finished sweep: its rows (ranked), where it wrote, and its exit code."""

    rows: list[LeaderboardRow]
    out_dir: Path
    files: dict[str, Path]
    exit_code: int
    seconds: float


def _resumable(folder: Path, key: str) -> dict[str, Any] | None:
    """The record a killed sweep left for this checkpoint, if it was audited with the same settings."""
    try:
        if (folder / KEY_FILE).read_text(encoding="utf-8").strip() != key:
            return None
        return read_report(folder / "report.json").to_dict()
    except (OSError, AuditError, ValueError, KeyError, TypeError):
        return None


def run_sweep(config: AuditConfig, models: list[str], out_dir: Path, *, reporter: Reporter | None = None,
              note: Callable[[str], None] = lambda text: None, resume: bool = True, triage: bool = False,
              ray_address: str | None = None, gpus_per_task: float | None = None) -> Sweep:
    """Audit every checkpoint of ``models`` with ``config`` (its ``model`` and ``out_dir`` replaced), sharing the
    original's and the reference's runs through the result cache (a private one under ``out_dir`` when the user's is
    off), then write the leaderboard. With ``triage`` every checkpoint is screened first (the loss screen under
    every variant, in ``<checkpoint>/screen``) and gets the full probes only if the screen's verdict is not PASS,
    i.e. its screened residual or a recovery is not clearly (the whole interval) below the thresholds.
    ``note`` receives one line per checkpoint with the sweep's ETA. With ``ray_address`` (``local``, ``auto`` or
    ``ray://HOST:PORT``) each checkpoint is a Ray task requesting ``gpus_per_task`` GPUs (None: 1 where the
    cluster has GPUs, else 0; recorded in the leaderboard's ``ray``; see :mod:`.distributed`)."""
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not config.cache_results:  # the shared runs need a cache: this sweep's own
        config = dataclasses.replace(config, cache_results=True, results_dir=out_dir / ".results")
    taken: set[str] = set()
    names = [folder_name(model, taken) for model in models]
    ray_meta: dict[str, Any] = {}
    if ray_address is not None:
        from .distributed import ray_rows

        rows, ray_meta = ray_rows(config, models, names, out_dir, ray_address, gpus_per_task, note, resume, triage)
    else:
        rows, spent = [], []
        for i, (model, name) in enumerate(zip(models, names), 1):
            t = time.time()
            rows.append(one_checkpoint(config, model, name, out_dir, f"[{i}/{len(models)}] {model}",
                                       eta_text(spent, len(models) - i + 1), reporter, note, resume, triage))
            spent.append(time.time() - t)
    ranked = rank_rows(rows)
    meta = {"checkpoints": len(models), "settings": _settings_line(config), "triage": triage,
            "seconds": round(time.time() - started, 1), **({"ray": ray_meta} if ray_address is not None else {})}
    files = {}
    for file, render in RENDERERS.items():
        files[file] = out_dir / file
        write_atomic(files[file], render(ranked, meta))
    return Sweep(rows=ranked, out_dir=out_dir, files=files, exit_code=sweep_exit_code(ranked),
                 seconds=round(time.time() - started, 1))


def eta_text(spent: list[float], left: int) -> str:
    """", about N min left" at the pace of the checkpoints done so far (past the first, which also computed the
    shared runs, once there are others)."""
    pace = spent[1:] or spent
    return "" if not pace else f", about {_duration(sum(pace) / len(pace) * left)} left"


def one_checkpoint(config: AuditConfig, model: str, name: str, out_dir: Path, title: str, eta: str,
                   reporter: Reporter | None, note: Callable[[str], None], resume: bool,
                   triage: bool) -> LeaderboardRow:
    """One checkpoint: its record kept from an earlier run, or its screen and (unless the screen clears it) its
    audit; an error is its row."""
    folder = out_dir / name
    full = dataclasses.replace(config, model=model, out_dir=folder, command=_command(config.command, model, folder))
    screen = dataclasses.replace(full, out_dir=folder / "screen",
                                 command=_command(config.command, model, folder / "screen", "screen")).screen_only()
    if resume and (record := _resumable(folder, settings_key(full))) is not None:
        note(f"{title}: {record['verdict']['decision']} (kept from an earlier run){eta}")
        return row_from_record(model, name, record, resumed=True)
    if resume and triage and (record := _resumable(folder / "screen", settings_key(screen))) is not None \
            and record["verdict"]["decision"] == "PASS":
        note(f"{title}: screened PASS (kept from an earlier run){eta}")
        return row_from_record(model, f"{name}/screen", record, resumed=True, screened_only=True)
    note(f"{title}{eta}")
    try:
        if triage:
            record = _audited(screen, folder / "screen", reporter)
            if record["verdict"]["decision"] == "PASS":  # every screened share clearly below its threshold
                return row_from_record(model, f"{name}/screen", record, screened_only=True)
        return row_from_record(model, name, _audited(full, folder, reporter))
    except AuditError as exc:
        return error_row(model, name, str(exc), int(exc.exit_code))
    except Exception as exc:  # noqa: BLE001 - one checkpoint's failure is its row, not the sweep's end
        return error_row(model, name, f"{type(exc).__name__}: {exc}".splitlines()[0][:300], int(ExitCode.RUNTIME))


def _audited(config: AuditConfig, folder: Path, reporter: Reporter | None) -> dict[str, Any]:
    """Audit, write the reports as ``check`` does, then the settings key (a resumed sweep trusts only a record
    whose key was written after it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / KEY_FILE).unlink(missing_ok=True)
    report = audit(config, reporter or SilentReporter())
    write_reports(report, folder, config.formats)
    write_atomic(folder / KEY_FILE, settings_key(config) + "\n")
    return report.to_dict()


def _settings_line(config: AuditConfig) -> str:
    forget = config.forget or config.spec_path or "each checkpoint's spec"
    variants = ", ".join([*config.quant, *config.attack]) or "none"
    return f"forget set {forget}; variants {variants}"


def _command(command: str | None, model: str, folder: Path, verb: str = "check") -> str | None:
    """The ``check`` (or ``screen``) command that reproduces one checkpoint's record: the sweep's own, SOURCE replaced
    by the checkpoint, the output folder by its report folder, the sweep's own flags dropped."""
    import shlex

    if not command:
        return None
    words = shlex.split(command)
    if len(words) < 3 or words[1] != "sweep":
        return command
    rest, skip = [], False
    for w in words[3:]:  # the sweep's own flags are not check's
        if skip:
            skip = False
        elif w in ("--ray", "--gpus-per-task"):
            skip = True
        elif w not in ("--triage", "--resume", "--no-resume") and not w.startswith(("--ray=", "--gpus-per-task=")):
            rest.append(w)
    words = [words[0], verb, model, *rest]
    for flag in ("--out", "-o"):
        if flag in words[:-1]:
            words[words.index(flag) + 1] = str(folder)
            break
    else:
        words += ["--out", str(folder)]
    return shlex.join(words)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
