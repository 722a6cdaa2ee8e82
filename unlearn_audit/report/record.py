"""The audit record: a versioned, JSON-ready account of one audit. Every view is rendered from it."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, RuntimeFailure

SCHEMA_VERSION = 5
READABLE_VERSIONS = (3, 4, 5)
"""Records this tool reads: version 4 only adds the tamper battery's attacks to version 3."""
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / f"report-v{SCHEMA_VERSION}.schema.json"
"""The published JSON Schema of the record (shipped in the package; `unlearn-audit schema` prints it)."""


@dataclass
class VariantRun:
    """One model at one variant (full precision or a quantization) through every probe.

    Attributes:
        role: ``original``, ``unlearned`` or ``retrain``.
        variant: ``full`` or the quantizer's label (``rtn:4:g128``).
        settings: the quantizer's settings (None at full precision).
        proof: evidence the quantization happened (see QuantProof).
        metrics: per metric, ``{"value", "low", "high"}`` on a 0-100 scale (PrivLeak: the normalised score,
            and ``privleak_auc`` the AUC x 100).
        details: per probe, the settings it ran with.
        items: per probe, every item's prompt, reference, generation and score.
        seconds: wall time of this variant's probes.
    """

    role: str
    variant: str
    settings: dict[str, Any] | None
    proof: dict[str, Any] | None
    metrics: dict[str, dict[str, float | None]]
    details: dict[str, dict[str, Any]]
    items: dict[str, list[dict[str, Any]]]
    seconds: float


@dataclass
class AuditReport:
    """Everything about one audit. ``to_dict`` / ``from_dict`` round-trip through JSON."""

    tool_version: str
    created_at: str
    command: str | None
    config: dict[str, Any]
    spec: dict[str, Any]
    spec_source: str
    models: dict[str, dict[str, Any]]
    """Per role: the resolved repo (id, revision, commit), how it was found, parameters, dtype."""
    dataset: dict[str, Any]
    data_counts: dict[str, int]
    reference: dict[str, Any]
    """What PrivLeak was normalised against and residuals measured above (named, never silent)."""
    variants: list[str]
    runs: list[VariantRun]
    residuals: list[dict[str, Any]]
    recoveries: list[dict[str, Any]]
    net_recoveries: list[dict[str, Any]]
    """Recoveries net of the reference model's drift under the same variant (empty without a reference model)."""
    verdict: dict[str, Any]
    thresholds: dict[str, Any]
    environment: dict[str, Any]
    truncated: dict[str, int]
    duration_seconds: float
    notes: list[str] = field(default_factory=list)
    utility_drops: list[dict[str, Any]] = field(default_factory=list)
    """Per utility metric (KnowMem retain, TOFU model utility, MMLU) and variant (null: full precision): the share of
    the original's utility the unlearned model lost, with its interval; ``reported`` unless ``--max-utility-drop``
    gates the full-precision figure (schema version 5)."""
    weight_diff: dict[str, Any] | None = None
    """The weight-level diagnostic (see unlearn_audit.quantize.diagnostic), when both checkpoints are safetensors."""
    published: list[dict[str, Any]] | None = None
    """``--published``: each derivative repo listed, the files audited as variants and those skipped, and why."""
    split: dict[str, Any] | None = None
    """With ``relearn-forget`` or ``icl``: how the forget set was cut (unit, seed, units and items of each half,
    items probed in neither, the training texts' SHA-256); every run probed the probed half."""
    execution: dict[str, Any] | None = None
    """How this audit ran: device, dtype, batch size, peak memory, which runs came from the result cache.
    With ``created_at``, ``duration_seconds`` and each run's ``seconds``, these are the only fields that
    differ between two runs of the same audit (see :data:`VOLATILE`)."""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise InputError(f"the record has schema version {version}; this tool reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}",
                             "re-render it with the unlearn-audit version that wrote it, or re-run the audit")
        fields = dict(data)
        try:
            runs = data["runs"]
            if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
                raise TypeError("'runs' is not a list of runs")
            fields["runs"] = [VariantRun(**r) for r in runs]
            return cls(**fields)
        except (TypeError, KeyError) as exc:
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InputError(f"the record is not a complete audit record ({detail})",
                             "pass a report.json this tool wrote") from None


def judged_recoveries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The recoveries the verdict read: net of the reference model's drift where one was quantized, else gross."""
    return record.get("net_recoveries") or record["recoveries"]


def attack_labels(record: dict[str, Any]) -> list[str]:
    """The variants of the record that are attacks of the tamper battery (their proof names the attack), in order."""
    attacks = {r["variant"] for r in record["runs"] if (r.get("proof") or {}).get("attack")}
    return [v for v in record["variants"] if v in attacks]


VOLATILE = ("created_at", "duration_seconds", "execution")
"""Top-level fields that describe one execution rather than the audit's results."""


def _without_seconds(proof: Any) -> Any:
    """An attack's proof less its wall time (the one field of it an execution changes)."""
    return {k: v for k, v in proof.items() if k != "seconds"} if isinstance(proof, dict) else proof


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without what differs between executions of the same audit (timings, memory, cache use):
    two audits with equal settings must give equal comparable records, cached, resumed or not."""
    data = {k: v for k, v in record.items() if k not in VOLATILE}
    data["runs"] = [{k: _without_seconds(v) if k == "proof" else v for k, v in run.items() if k != "seconds"}
                    for run in record["runs"]]
    return data


def read_report(path: Path) -> AuditReport:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", "pass the report.json an audit wrote") from None
    except ValueError as exc:
        raise InputError(f"{path} is not JSON ({exc})", "pass the report.json an audit wrote") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not an audit record", "pass the report.json an audit wrote")
    return AuditReport.from_dict(data)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write into {path.parent}: {exc.strerror}",
                             "choose a writable --out folder") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary file would be, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeFailure(f"cannot write {path}: {exc.strerror}", "free disk space or choose another --out") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
