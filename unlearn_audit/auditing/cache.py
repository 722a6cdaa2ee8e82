"""On-disk cache of probe results, one file per (model, variant) run.

A run's key covers everything its results depend on: the model's revision (the commit SHA, or for a local
folder the names, sizes and modification times of its files), the variant's settings (method, bits,
library version, calibration text hash...), the probe settings, the probed texts themselves (so the
dataset revision, the spec's splits and --max-items are all in it), the dtype and device type, and the
tool's version and source code, the torch/transformers/tokenizers versions and the accelerator model. Batch
size is only in 16-bit runs: in float32 batched results equal one-at-a-time results (tested); in bfloat16
they do not exactly (padding changes the kernels' reduction order), so there the requested batch size and
device map are part of the key.

So a re-run reuses what it can, the original's runs are shared by audits of many unlearned checkpoints
of it, and an audit killed half-way finishes only what was missing. Entries are written atomically (a
temporary file of a unique name, then a rename): a kill never leaves a half-written entry, and two audits (or Ray
workers) writing the same entry at once leave one whole entry, the last renamed. Each entry carries the SHA-256 of
its body, checked on every read: an entry truncated or edited after it was written (a disk fault, a hand edit) is
not trusted but recomputed, and the record says so (``execution.cache.rejected``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RuntimeFailure
from ..probes.base import ItemScore, ProbeOutput
from ..report.record import write_atomic
from ..version import __version__

CACHE_FORMAT = 2
"""2: the body as a JSON string beside its SHA-256 (1: the body alone, unchecked)."""


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of this package's Python sources: a development checkout whose code changed does not reuse
    results computed by other code under the same version number."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # unlearn_audit/
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def texts_digest(groups: dict[str, list[str]]) -> str:
    """SHA-256 of every probed text, in order, split by split."""
    digest = hashlib.sha256()
    for name in sorted(groups):
        digest.update(name.encode() + b"\1")
        for text in groups[name]:
            digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


@dataclass
class CachedRun:
    """What one (model, variant) run produced: the probes' outputs, the variant's settings and proof,
    truncation counts and the wall time it took."""

    probes: dict[str, ProbeOutput]
    settings: dict[str, Any] | None
    proof: dict[str, Any] | None
    truncated: dict[str, int]
    seconds: float
    n_parameters: int | None = None

    def to_json(self) -> str:
        probes = {name: {"metric": out.metric, "kind": out.kind, "details": out.details,
                         "items": [[i.item_id, i.score, i.prompt, i.reference, i.generation, i.extra]
                                   for i in out.items]} for name, out in self.probes.items()}
        # allow_nan: scores may be NaN or infinite and must come back exactly as they were
        body = json.dumps({"probes": probes, "settings": self.settings, "proof": self.proof,
                           "truncated": self.truncated, "seconds": self.seconds,
                           "n_parameters": self.n_parameters}, allow_nan=True)
        return json.dumps({"format": CACHE_FORMAT, "sha256": hashlib.sha256(body.encode()).hexdigest(), "body": body})

    @classmethod
    def from_json(cls, text: str) -> CachedRun:
        """Raises :class:`OtherFormat` for an entry of another format, :class:`Corrupted` when the entry does not
        parse or its body does not match its checksum."""
        try:
            entry = json.loads(text)
        except ValueError:
            raise Corrupted("not JSON (truncated?)") from None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            raise OtherFormat()
        body = entry.get("body")
        if not isinstance(body, str) or hashlib.sha256(body.encode()).hexdigest() != entry.get("sha256"):
            raise Corrupted("checksum mismatch (edited or damaged)")
        try:
            return cls._from_body(json.loads(body))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise Corrupted(f"unreadable body ({type(exc).__name__})") from None

    @classmethod
    def _from_body(cls, data: dict[str, Any]) -> CachedRun:
        probes = {name: ProbeOutput(metric=p["metric"], kind=p["kind"], details=p["details"],
                                    items=[ItemScore(item_id=i[0], score=i[1], prompt=i[2], reference=i[3],
                                                     generation=i[4], extra=i[5]) for i in p["items"]])
                  for name, p in data["probes"].items()}
        return cls(probes=probes, settings=data["settings"], proof=data["proof"], truncated=data["truncated"],
                   seconds=data["seconds"], n_parameters=data.get("n_parameters"))


class OtherFormat(Exception):
    """A cache entry written by another cache format: recomputed, not reported."""


class Corrupted(Exception):
    """A cache entry that does not parse or does not match its checksum: recomputed, and reported."""


@dataclass(frozen=True)
class ResultCache:
    """The cache folder (``None``: caching off)."""

    root: Path | None

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps({"tool": __version__, "code": code_digest(), **parts}, sort_keys=True,
                                         default=str)
                              .encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> CachedRun | None:
        """The cached run, or None (also for an unreadable or foreign entry, which is then recomputed)."""
        return self.check(key)[0]

    def check(self, key: str) -> tuple[CachedRun | None, str | None]:
        """(the cached run or None, why an entry that exists was not used: None when there is none, or it is of
        another format)."""
        if self.root is None:
            return None, None
        path = self._path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"unreadable ({type(exc).__name__})"
        try:
            return CachedRun.from_json(text), None
        except OtherFormat:
            return None, None
        except Corrupted as exc:
            return None, str(exc)

    def store(self, key: str, run: CachedRun) -> None:
        if self.root is None:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeFailure(f"cannot create the result cache {path.parent}: {exc.strerror}",
                                 "pass --cache-results to a writable folder, or --no-cache") from None
        write_atomic(path, run.to_json())
