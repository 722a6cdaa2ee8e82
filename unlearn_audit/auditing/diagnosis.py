"""The weight-level diagnostic inside an audit: read before any probe (no data needed), and completed after the runs
for the variants whose grid exists only once both quantized checkpoints are made (see
:mod:`unlearn_audit.quantize.diagnostic`)."""

from __future__ import annotations

from typing import Any

from ..attacks import is_attack
from ..config import AuditConfig
from ..errors import InputError
from ..quantize.diagnostic import weight_diff
from ..quantize.kept_checkpoints import compare_kept
from .planning import Plan
from .reporter import Reporter
from .scratch import compared_after, saved_checkpoint


def diagnose(plan: Plan, config: AuditConfig, reporter: Reporter) -> dict[str, Any] | None:
    """The weight-level diagnostic (no data needed)."""
    try:
        unlearned, original = plan.repos["unlearned"], plan.repos["original"]
        quantizers = [q for q in plan.quantizers if not is_attack(q)]  # it compares grids, not attacks
        result = weight_diff(unlearned.path, original.path, quantizers,
                             labels=(unlearned.reference, original.reference), run_dtype=config.resolved_dtype,
                             device=config.device if config.device_map is None else "cpu",
                             progress=lambda total: reporter.task("weight diagnostic (no data needed)", total))
        plan.timings["weight_diagnostic"] = result.seconds
        return result.as_dict()
    except InputError as exc:
        plan.notes.append(f"No weight-level diagnostic: {exc.message}.")
        return None


def diagnose_after(plan: Plan, diagnostic: dict[str, Any] | None) -> None:
    """Compare the two kept checkpoints of each variant whose grid is known only once it is made (GPTQ/AWQ
    group by group, GGUF block by block), or say why not (a side reused from the result cache kept none)."""
    if diagnostic is None or plan.scratch is None:
        return
    for quantizer in plan.quantizers:
        if not compared_after(quantizer):
            continue
        saved_u, saved_o = (saved_checkpoint(plan.scratch, role, quantizer.label) for role in ("unlearned", "original"))
        if not (saved_u.is_dir() and saved_o.is_dir()):
            diagnostic["not_compared"][quantizer.label] = (
                "its grid is known only once it is made, so it is compared from the two quantized checkpoints, and "
                "one of them came from the result cache in this audit (run with --no-cache to compare)")
            continue
        unlearned, original = plan.repos["unlearned"].path, plan.repos["original"].path
        diagnostic["overall"][quantizer.label] = compare_kept(quantizer, unlearned, original, saved_u, saved_o)
        diagnostic["quantizers"].append(quantizer.label)
        diagnostic["not_compared"].pop(quantizer.label, None)
