"""A sweep on Ray (``--ray``): each checkpoint one Ray task requesting the devices one audit needs, on a local Ray
instance (``local``: started here, one worker per CPU core) or a running cluster (``auto``, ``ray://HOST:PORT``).

The original's and the reference's runs are shared as in-process, through the result cache: its folder
(``--results-dir``) is read and written by every task, so the first checkpoint is audited alone (it computes them)
and the rest in parallel (they read them). A shared folder rather than Ray's object store because the cache entries
are the files every audit already reads and writes, they outlive the cluster (a resumed sweep finds them), and the
reports must land on disk anyway; on a multi-machine cluster both the results folder and ``--out`` must be on shared
storage (NFS or similar) mounted at the same path, and every node needs unlearn-audit installed.
Ray is an extra: ``pip install 'unlearn-audit[ray]'``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import AuditConfig
from ..errors import UsageError
from ..report.leaderboard import LeaderboardRow


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed",
                         "pip install 'unlearn-audit[ray]' (or drop --ray to sweep in this process)") from None
    return ray


def _task(config: AuditConfig, model: str, name: str, out_dir: Path, title: str, resume: bool,
          triage: bool) -> dict[str, Any]:
    """One checkpoint on a Ray worker, with as many torch threads as CPUs the task was given."""
    import ray
    import torch

    from ..support.noise import quiet_third_party
    from . import one_checkpoint

    quiet_third_party()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return one_checkpoint(config, model, name, out_dir, title, "", None, lambda text: None, resume,
                          triage).as_dict()


def ray_rows(config: AuditConfig, models: list[str], names: list[str], out_dir: Path, address: str,
             gpus_per_task: float | None, note: Callable[[str], None], resume: bool, triage: bool
             ) -> tuple[list[LeaderboardRow], dict[str, Any]]:
    """Every checkpoint as a Ray task; the first alone (it computes the shared runs), then the rest in parallel.
    Rows come back in the order given, with what the tasks asked of the cluster (``address``, its GPUs,
    ``gpus_per_task``). ``gpus_per_task`` None follows the cluster: 1 where it has GPUs, else 0 (the audits on
    CPUs); a number the cluster cannot give is refused."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address == "local" else address, logging_level=logging.ERROR, log_to_driver=False,
                 include_dashboard=False, **({"num_cpus": os.cpu_count()} if address == "local" else {}))
    try:
        available = ray.cluster_resources().get("GPU", 0)
        if gpus_per_task is None:  # follow the cluster
            gpus_per_task = 1.0 if available >= 1 else 0.0
            note(f"Ray cluster: {available:g} GPU(s); each audit asks for {gpus_per_task:g} "
                 "(--gpus-per-task to choose)")
        if gpus_per_task > available:
            raise UsageError(f"each audit asks for {gpus_per_task:g} GPU(s) and the Ray cluster has {available:g}",
                             "start Ray on machines with GPUs, or pass --gpus-per-task 0 to audit on CPUs")
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_task, max_retries=0)(_task)
        rows: dict[int, LeaderboardRow] = {}
        note(f"[1/{len(models)}] {models[0]} (alone: it computes the original's and the reference's runs)")
        rows[0] = LeaderboardRow(**ray.get(task.remote(config, models[0], names[0], out_dir, models[0], resume,
                                                        triage)))
        pending = {task.remote(config, m, n, out_dir, m, resume, triage): i
                   for i, (m, n) in enumerate(zip(models, names)) if i > 0}
        if pending:
            note(f"{len(pending)} checkpoints on Ray in parallel")
        parallel = time.time()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            rows[i] = LeaderboardRow(**ray.get(done[0]))
            finished = len(models) - len(pending)
            left = (time.time() - parallel) / (finished - 1) * len(pending)  # at the parallel part's pace so far
            note(f"[{finished}/{len(models)}] {models[i]}: {rows[i].decision}"
                 + ("" if not pending else f", about {left / 60:.0f} min left" if left >= 90
                    else f", about {left:.0f} s left"))
        return [rows[i] for i in range(len(models))], {"address": address, "cluster_gpus": available,
                                                          "gpus_per_task": gpus_per_task}
    finally:
        if started_here:
            ray.shutdown()
