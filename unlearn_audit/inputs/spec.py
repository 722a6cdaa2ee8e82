"""The forget-set spec (``unlearn_audit.yaml``): what was forgotten and how to probe it.

Looked up in this order (first found wins): ``--spec PATH``; ``unlearn_audit.yaml`` in the audited
model's repo; an ``unlearn_audit:`` block in its model card metadata; the ``--forget`` preset or
dataset. Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError

SPEC_VERSION = 1
SPEC_FILENAME = "unlearn_audit.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Probed(_Strict):
    """A section some probe reads: ``columns`` maps the roles it reads (``ROLES``, MUSE's column names) to the
    dataset's columns where they are named otherwise."""

    ROLES: ClassVar[tuple[str, ...]] = ()
    columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = [key for key in v if key not in cls.ROLES]
        if unknown:
            raise ValueError(f"unknown column role '{unknown[0]}' (this probe reads {', '.join(cls.ROLES)})")
        return v


class VerbMemSpec(_Probed):
    """Where the VerbMem items live: columns ``prompt`` and ``gt`` (``columns`` maps them to the dataset's)."""

    ROLES = ("prompt", "gt")
    config: str = "verbmem"
    split: str = "forget"


class KnowMemSpec(_Probed):
    """Where one KnowMem set lives: columns ``question`` and ``answer``; ICL pairs from ``icl_split``."""

    ROLES = ("question", "answer")
    config: str = "knowmem"
    split: str
    icl_split: str


class PrivLeakSpec(_Probed):
    """Where the PrivLeak texts live (column ``text``) and what the AUC is normalised against."""

    ROLES = ("text",)
    config: str = "privleak"
    forget_split: str = "forget"
    holdout_split: str = "holdout"
    retain_split: str = "retain"
    reference_auc: float | None = Field(default=None, gt=0, lt=1)
    """Published AUC of a retrained model (MUSE's constants); used only when no retrain model is named."""
    reference_auc_dtype: str | None = None
    """The dtype the published AUC was measured in (MUSE: bfloat16), recorded beside it."""


class HoldoutSpec(_Probed):
    """Held-out text (column ``text``) the models never saw: probed the way VerbMem probes the forget set,
    it is the floor a model's VerbMem must beat before it counts as memory of the forget set."""

    ROLES = ("text",)
    config: str = "privleak"
    split: str = "holdout"


class TofuSpec(_Probed):
    """TOFU's question-answer sets (open-unlearning's evaluation): the forget split's perturbed file holds each
    item's ``question``, ``answer``, ``paraphrased_answer`` and ``perturbed_answer`` (a list); the retain,
    real-authors and world-facts sets give model utility (real authors and world facts need no paraphrase: their
    answer is the correct one). Config ``.``: TOFU keeps every split as a JSON file at the repo's root."""

    ROLES = ("question", "answer", "paraphrased_answer", "perturbed_answer")
    config: str = "."
    forget_split: str = "forget10"
    forget_perturbed_split: str | None = None
    """Default ``<forget_split>_perturbed`` (TOFU's name)."""
    retain_split: str | None = "retain_perturbed"
    real_authors_split: str | None = "real_authors_perturbed"
    world_facts_split: str | None = "world_facts_perturbed"
    user_start_tag: str = "Question: "
    user_end_tag: str = "\n"
    asst_start_tag: str = "Answer: "
    """The prompt around each question when no chat template is applied (open-unlearning's ``template_args`` for
    base models); Llama-2-chat's TOFU models use ``[INST] `` / `` [/INST]`` / empty."""
    system_prompt: str | None = "You are a helpful assistant."
    """With ``chat_template: true``: the system turn before the question (open-unlearning's Llama-3 Instruct setting)."""
    max_new_tokens: int = Field(default=200, ge=1)
    """Greedy tokens generated for ROUGE (open-unlearning's ``configs/generation/default.yaml``: 200)."""
    author_items: int = Field(default=20, ge=1)
    """Consecutive forget questions about one fictitious author (TOFU's 20): the unit the ``relearn-forget`` and
    ``icl`` attacks split the forget set by."""

    def perturbed_split(self) -> str:
        return self.forget_perturbed_split or f"{self.forget_split}_perturbed"


class WmdpSpec(_Probed):
    """Four-choice questions (columns ``question``, ``choices``: a list, ``answer``: the right choice's index), scored
    zero-shot as lm-evaluation-harness scores WMDP: the log-likelihood of each answer letter after the prompt."""

    ROLES = ("question", "choices", "answer")
    config: str = "wmdp-bio"
    split: str = "test"
    subject: str = "biology"
    """Named in the prompt's first line: ``The following are multiple choice questions (with answers) about {subject}.``"""


class MmluSpec(_Probed):
    """The utility set of a WMDP audit: MMLU subjects (or any dataset in its layout: a config per subject, columns
    ``question``, ``choices``, ``answer``), scored like WMDP, each prompt naming its config as the subject
    (``college_biology``: "college biology"), as lm-evaluation-harness's MMLU tasks do."""

    ROLES = ("question", "choices", "answer")
    dataset: str = "cais/mmlu"
    dataset_revision: str | None = None
    configs: tuple[str, ...] = ("college_biology", "virology")
    split: str = "test"


BENCHMARKS = ("muse", "tofu", "wmdp")


class ForgetSpec(_Strict):
    """What was forgotten and how to probe it."""

    spec_version: int = SPEC_VERSION
    name: str = "forget-set"
    benchmark: Literal["muse", "tofu", "wmdp"] = "muse"
    """Which probes run: ``muse`` (VerbMem, KnowMem, PrivLeak; the sections verbmem, knowmem_*, privleak, holdout),
    ``tofu`` (the section tofu) or ``wmdp`` (the sections wmdp and mmlu)."""
    dataset: str
    """Dataset repo id on the Hub, or a local folder: each split a file ``<config>/<split>-*.parquet`` (MUSE's
    layout), ``<config>/<split>.parquet``, ``<config>/<split>.jsonl`` or ``<config>/<split>.json``; config
    ``.`` for files at the repo's root."""
    dataset_revision: str | None = None
    original: str | None = None
    """The original (pre-unlearning) model; default: the audited model card's ``base_model``."""
    original_revision: str | None = None
    retrain: str | None = None
    """A model trained without the forget set: the reference for PrivLeak and the floor for residuals."""
    retrain_revision: str | None = None
    reference: str | None = None
    """A model that never saw the forget set, used when no ``retrain`` is named (default: the original's
    card ``base_model``: for a fine-tuned original, the model it was fine-tuned from)."""
    reference_revision: str | None = None
    holdout: HoldoutSpec = HoldoutSpec()
    tokenizer: str | None = None
    """Where to load the tokenizer from when a model repo carries none (MUSE's targets are evaluated with
    ``meta-llama/Llama-2-7b-hf``'s); ``--tokenizer`` overrides it for every model."""
    tokenizer_revision: str | None = None
    chat_template: bool = False
    """Apply the tokenizer's chat template to KnowMem questions (instruct models, as open-unlearning
    does for its Instruct models); off by default, as MUSE."""
    verbmem: VerbMemSpec = VerbMemSpec()
    knowmem_forget: KnowMemSpec = KnowMemSpec(split="forget_qa", icl_split="forget_qa_icl")
    knowmem_retain: KnowMemSpec = KnowMemSpec(split="retain_qa", icl_split="retain_qa_icl")
    privleak: PrivLeakSpec = PrivLeakSpec()
    tofu: TofuSpec = TofuSpec()
    wmdp: WmdpSpec = WmdpSpec()
    mmlu: MmluSpec = MmluSpec()

    @field_validator("spec_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SPEC_VERSION:
            raise ValueError(f"spec_version {v} is not supported (this tool reads version {SPEC_VERSION})")
        return v


PRESETS: dict[str, dict[str, Any]] = {
    "news": {
        "name": "MUSE-News",
        "dataset": "muse-bench/MUSE-News",
        "original": "muse-bench/MUSE-News_target",
        "tokenizer": "meta-llama/Llama-2-7b-hf",
        "privleak": {"reference_auc": 0.4772, "reference_auc_dtype": "bfloat16"},
    },
    "books": {
        "name": "MUSE-Books",
        "dataset": "muse-bench/MUSE-Books",
        "original": "muse-bench/MUSE-Books_target",
        "tokenizer": "meta-llama/Llama-2-7b-hf",
        "privleak": {"reference_auc": 0.5393, "reference_auc_dtype": "bfloat16"},
    },
}
"""MUSE on the Hub, with the ids MUSE's README, open-unlearning and the quantization paper use (the
Hub resolves any casing, but a local cache keeps the casing it was filled with). MUSE's evaluation loads
the tokenizer of ``meta-llama/Llama-2-7b-hf`` (its ``--tokenizer_dir``); the AUC constants are MUSE's
published retrained-model AUCs, measured in bfloat16 on the Llama-2-7B targets."""


BENCHMARK_PRESETS: dict[str, dict[str, Any]] = {
    "tofu": {"name": "TOFU", "benchmark": "tofu", "dataset": "locuslab/TOFU"},
    "wmdp-bio": {"name": "WMDP-Bio", "benchmark": "wmdp", "dataset": "cais/wmdp",
                 "wmdp": {"config": "wmdp-bio", "subject": "biology"},
                 "mmlu": {"configs": ["college_biology", "virology"]}},
    "wmdp-cyber": {"name": "WMDP-Cyber", "benchmark": "wmdp", "dataset": "cais/wmdp",
                   "wmdp": {"config": "wmdp-cyber", "subject": "cybersecurity"},
                   "mmlu": {"configs": ["college_computer_science", "computer_security"]}},
    "wmdp-chem": {"name": "WMDP-Chem", "benchmark": "wmdp", "dataset": "cais/wmdp",
                  "wmdp": {"config": "wmdp-chem", "subject": "chemistry"},
                  "mmlu": {"configs": ["college_chemistry", "high_school_chemistry"]}},
}
"""TOFU (``locuslab/TOFU``: JSON files at the root, ``forget10.json``, ``forget10_perturbed.json``...) and WMDP
(``cais/wmdp``: configs ``wmdp-bio``/``wmdp-cyber``/``wmdp-chem``, split ``test``), with the MMLU subjects nearest each
WMDP domain as its utility set (``cais/mmlu``). ``--forget tofu:forget05`` picks TOFU's forget split. The original
and retrained models depend on the model family (open-unlearning publishes one per family): they come from the
audited model's card or spec, or ``--original``."""

PRESET_CHOICES = tuple(PRESETS) + ("tofu[:SPLIT]",) + tuple(k for k in BENCHMARK_PRESETS if k != "tofu")


def preset_name(forget: str) -> str | None:
    """The preset ``--forget`` names (``tofu:forget05`` names ``tofu``), or None for a dataset."""
    head = forget.split(":", 1)[0]
    if forget in PRESETS or forget in BENCHMARK_PRESETS or (head == "tofu" and ":" in forget):
        return head
    return None


def preset_choices(forget: str) -> dict[str, Any]:
    """What a benchmark preset chooses inside its benchmark (laid over a model's own spec of that benchmark):
    TOFU's forget split, WMDP's domain."""
    name = preset_name(forget)
    if name == "tofu":
        split = forget.split(":", 1)[1] if ":" in forget else "forget10"
        return {"benchmark": "tofu", "tofu": {"forget_split": split}}
    if name in BENCHMARK_PRESETS:  # the domain; a model's own spec keeps its utility set
        return {"benchmark": "wmdp", "wmdp": dict(BENCHMARK_PRESETS[name]["wmdp"])}
    return {}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid onto ``base``, section by section."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def parse_spec(data: Any, origin: str) -> ForgetSpec:
    """Validate a spec mapping; ``origin`` names where it came from, for the error message."""
    if not isinstance(data, dict):
        raise InputError(f"the forget-set spec in {origin} is not a mapping",
                         "write it as YAML keys, see docs/spec.md")
    try:
        return ForgetSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise InputError(f"invalid forget-set spec in {origin}: {where}: {problem}",
                         "fix that key (see docs/spec.md)") from None


def load_spec_file(path: Path) -> ForgetSpec:
    return parse_spec(spec_mapping(path), str(path))


def spec_mapping(path: Path) -> Any:
    """A spec file's YAML, unvalidated."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read spec {path}: {exc.strerror}", "pass an existing YAML file to --spec") from None
    except UnicodeDecodeError:
        raise InputError(f"spec {path} is not UTF-8 text", "pass a YAML file to --spec") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"spec {path} is not valid YAML ({str(exc).splitlines()[0]})",
                         "fix the YAML syntax") from None
    return data


def preset_spec(forget: str) -> ForgetSpec:
    """The spec of a preset: ``news``, ``books``, ``tofu[:SPLIT]``, ``wmdp-bio``, ``wmdp-cyber``, ``wmdp-chem``."""
    name = preset_name(forget)
    if name in PRESETS:
        return parse_spec(PRESETS[name], f"preset '{name}'")
    return parse_spec(merged(BENCHMARK_PRESETS[name], preset_choices(forget)), f"preset '{forget}'")


def spec_for_dataset(dataset: str) -> ForgetSpec:
    """A spec with MUSE's default configs and splits for a dataset repo id or folder."""
    return parse_spec({"name": Path(dataset).name or dataset, "dataset": dataset}, f"--forget {dataset}")


def spec_template(dataset: str, original: str | None = None, retrain: str | None = None) -> str:
    """A commented ``unlearn_audit.yaml`` with MUSE's default configs and splits, for publishers."""
    spec = parse_spec({"dataset": dataset, "original": original, "retrain": retrain}, "spec init")
    return f"""# unlearn-audit forget-set spec: what was forgotten and how to probe it.
# Put it in your model repo as {SPEC_FILENAME}; check it with `unlearn-audit spec validate`.
spec_version: {SPEC_VERSION}
name: {spec.name}
benchmark: muse                    # muse (these sections), tofu or wmdp: see docs/spec.md
dataset: {spec.dataset}            # Hub dataset id or folder: <config>/<split>-*.parquet (MUSE), .jsonl or .json
dataset_revision: null             # pin a branch, tag or commit
original: {spec.original or "null"}            # the model this one was unlearned from (default: the card's base_model)
original_revision: null
retrain: {spec.retrain or "null"}             # optional: a model trained without the forget set (PrivLeak reference)
retrain_revision: null
reference: null                    # used without retrain: a model that never saw the forget set (default: the original's base_model)
holdout: {{config: privleak, split: holdout}}   # held-out texts: the floor VerbMem must beat (column text)
tokenizer: null                    # tokenizer repo for models that ship none (MUSE: meta-llama/Llama-2-7b-hf)
chat_template: false               # apply the tokenizer's chat template to KnowMem questions (instruct models)
verbmem: {{config: verbmem, split: forget}}                                       # columns prompt, gt
# any section takes columns: {{role: your_column}} when yours are named otherwise, e.g. columns: {{gt: continuation}}
knowmem_forget: {{config: knowmem, split: forget_qa, icl_split: forget_qa_icl}}   # columns question, answer
knowmem_retain: {{config: knowmem, split: retain_qa, icl_split: retain_qa_icl}}
privleak: {{config: privleak, forget_split: forget, holdout_split: holdout, retain_split: retain, reference_auc: null}}
"""
