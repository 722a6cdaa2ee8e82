"""Which models an audit reads the unlearned one against: the original it was unlearned from, and the strongest
reference available (a retrained model, else a model that never saw the forget set, else the holdout floor or a
constant), with how far each kind can be trusted."""

from __future__ import annotations

from typing import Any

from ..analysis.figures import Reference
from ..config import AuditConfig
from ..errors import InputError, UsageError
from ..inputs.hub import ResolvedRepo, base_model_of, resolve
from ..inputs.spec import ForgetSpec

REFERENCE_STRENGTH = {
    "retrain": "strongest: a model trained without the forget set",
    "reference": "strong: a model that never saw the forget set (not trained on the retain set either)",
    "published": "weak: a published constant AUC, with the holdout floor for VerbMem",
    "default": "weakest: AUC 0.5, with the holdout floor for VerbMem",
}
"""How much a residual or recovery read against each kind of reference can be trusted (docs: verdict rules)."""


def original_of(config: AuditConfig, spec: ForgetSpec, spec_source: str, unlearned: ResolvedRepo,
                adapter_base_ref: str | None) -> tuple[str, str | None, str]:
    """The original model (id, revision) and how it was found: ``--original``, the spec, an adapter's base model, or
    the unlearned model's card ``base_model``."""
    if config.original:
        return config.original, config.original_revision, "from --original"
    if spec.original:
        return spec.original, spec.original_revision, f"from the spec, {spec_source}"
    if adapter_base_ref:
        return adapter_base_ref, None, "the adapter's base model (adapter_config.json)"
    base = base_model_of(unlearned.path)
    if not base:
        raise UsageError(f"cannot tell which model {unlearned.reference} was unlearned from",
                         "pass --original MODEL, or add base_model to its card")
    return base, None, "from the model card's base_model"


def reference_model(config: AuditConfig, spec: ForgetSpec, original: ResolvedRepo, notes: list[str],
                    common: dict[str, Any]) -> tuple[ResolvedRepo, str, bool] | None:
    """Without a retrained model: the spec's ``reference``, else the original's card ``base_model`` (the model it
    was fine-tuned from never saw the forget set). An implicit one that cannot be resolved is noted, not fatal."""
    if spec.reference:
        return resolve(spec.reference, revision=spec.reference_revision, **common), "from the spec's reference", True
    base = base_model_of(original.path)
    if not base or base in (original.reference, config.model):
        return None
    try:
        return resolve(base, **common), "the original's card base_model", False
    except InputError as exc:
        notes.append(f"The original's base model {base} could not be resolved ({exc.message}), so no reference model "
                     "was probed; VerbMem is read against the holdout floor.")
        return None


def choose_reference(spec: ForgetSpec, spec_source: str, repos: dict[str, ResolvedRepo], found_by: dict[str, str]
                     ) -> Reference:
    """The strongest reference available: retrain > reference model > holdout floor > constant."""
    if "retrain" in repos:
        return Reference("retrain", None, f"the retrained model {repos['retrain'].reference}, probed in this audit "
                         "at full precision and under every variant")
    if "reference" in repos:
        published = spec.privleak.reference_auc
        return Reference("reference", published, f"{repos['reference'].reference}, a model that never saw the forget "
                         f"set ({found_by['reference']}), probed in this audit at full precision and under every "
                         "variant; weaker than a retrained model, which would also have seen the retain set"
                         + (f"; the PrivLeak score stays normalised by the published AUC {published}, as MUSE "
                            "defines it" if published is not None else ""))
    if spec.benchmark == "tofu":
        return Reference("default", None, "no retained model was named (TOFU's retain90/95/99 model), so residuals are "
                         "measured against a model that never saw the forget set in theory: ROUGE and probability 0, "
                         "truth ratio 1; forget quality needs the retained model")
    if spec.benchmark == "wmdp":
        return Reference("default", None, "no model without the hazardous knowledge was named, so residuals are "
                         "measured above chance (25% accuracy on four choices)")
    floor = "VerbMem residuals are measured above the original's holdout floor, KnowMem residuals above 0"
    pl = spec.privleak
    if pl.reference_auc is not None:
        dtype = f", measured in {pl.reference_auc_dtype}" if pl.reference_auc_dtype else ""
        return Reference("published", pl.reference_auc,
                         f"the published AUC {pl.reference_auc} of a retrained model ({spec_source}{dtype}); {floor}")
    return Reference("default", 0.5, "AUC 0.5, a model that never saw the forget set (no retrained model, reference "
                     f"model or published AUC was given); {floor}")
