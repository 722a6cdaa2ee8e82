"""Published quants: the Hub's quantized derivatives of the audited model, each audited as a variant.

``check MODEL --published`` lists MODEL's model tree (``base_model:quantized:MODEL``, the tag the Hub puts on
repos whose card names MODEL as ``base_model`` with ``base_model_relation: quantized``), takes at most
``--published-max`` repos (most downloaded first) and, in each, the GGUF files matching
``--published-files``; each file becomes one variant of the unlearned model: its tensors dequantized into
the model exactly as they are stored. The original is quantized the same way where that can be reproduced:
llama.cpp with the file's own file type (``general.file_type``), and the record compares the per-tensor types
of both files. Repos that hold no GGUF file (GPTQ, AWQ, bitsandbytes checkpoints) are listed in the record as
not audited, with the reason. Only the chosen files are downloaded, in phase two.
"""

from __future__ import annotations

import struct

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError, QuantizationError, ResolutionError
from .base import QuantProof, QuantResult, verify_proof

GGUF_FILE_TYPES = {7: "q8_0", 2: "q4_0", 3: "q4_1", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s", 12: "q3_k_m",
                   13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k"}
"""llama.cpp's ``general.file_type`` numbers (``enum llama_ftype``) -> ``gguf:TYPE`` names."""


def list_quantized(model_id: str, limit: int) -> list[str]:
    """The Hub's quantized derivatives of ``model_id``, most downloaded first (the one network listing; the
    tests replace this function)."""
    from huggingface_hub import HfApi

    try:
        return [m.id for m in HfApi().list_models(filter=f"base_model:quantized:{model_id}", sort="downloads",
                                                  limit=limit)]
    except Exception as exc:  # noqa: BLE001 - any failure of the listing is one line
        raise ResolutionError(f"cannot list the quantized derivatives of {model_id}: {str(exc).splitlines()[0]}",
                              "check the network (the listing needs the Hub), or drop --published") from None


def repo_files(repo_id: str, *, cache_dir: Path | None, offline: bool) -> list[str]:
    """The files of a Hub repo: listed on the Hub, or, offline, those the local cache holds."""
    if not offline:
        from huggingface_hub import HfApi

        try:
            return HfApi().list_repo_files(repo_id)
        except Exception as exc:  # noqa: BLE001
            raise ResolutionError(f"cannot list the files of {repo_id}: {str(exc).splitlines()[0]}",
                                  "check the network, or drop --published") from None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: nothing to list offline
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@dataclass
class PublishedEntry:
    """One derivative repo and what the audit did with it."""

    repo_id: str
    files: list[str] = field(default_factory=list)
    """The GGUF files audited (each a variant ``published:REPO/FILE``); ``*`` for a GPTQ/AWQ checkpoint repo
    audited whole (variant ``published:REPO/*``)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """File (or the repo, ``*``) -> why it was not audited."""

    def as_dict(self) -> dict[str, Any]:
        return {"repo": self.repo_id, "files": list(self.files), "skipped": dict(self.skipped)}


def find_published(model_id: str, *, limit: int, pattern: str, cache_dir: Path | None,
                   offline: bool) -> tuple[list[PublishedGGUF | PublishedCheckpoint], list[PublishedEntry]]:
    """Phase one of ``--published``: the derivative repos and the GGUF files chosen in each (no download)."""
    if limit < 1:
        raise InputError(f"--published-max {limit} is not positive", "give --published-max 1 or more")
    variants: list[PublishedGGUF | PublishedCheckpoint] = []
    entries = []
    for repo_id in list_quantized(model_id, limit)[:limit]:
        entry = PublishedEntry(repo_id)
        files = repo_files(repo_id, cache_dir=cache_dir, offline=offline)
        ggufs = [f for f in files if f.endswith(".gguf") and "/" not in f]
        if not ggufs:
            checkpoint, why = _checkpoint_variant(repo_id, files, cache_dir=cache_dir, offline=offline)
            if checkpoint is not None:
                entry.files.append("*")
                variants.append(checkpoint)
            else:
                entry.skipped["*"] = why
        for name in ggufs:
            if not fnmatch.fnmatch(name, pattern):
                entry.skipped[name] = f"does not match --published-files {pattern}"
            elif "mmproj" in name.lower() or "imatrix" in name.lower():
                entry.skipped[name] = "not a model file (projector or importance matrix)"
            else:
                entry.files.append(name)
                variants.append(PublishedGGUF(repo_id=repo_id, filename=name))
        entries.append(entry)
    if not entries:
        raise InputError(f"the Hub lists no quantized derivative of {model_id}",
                         "drop --published (or check the model id: derivatives name it as base_model)")
    return variants, entries


def _checkpoint_variant(repo_id: str, files: list[str], *, cache_dir: Path | None,
                        offline: bool) -> tuple[PublishedCheckpoint | None, str]:
    """A GPTQ/AWQ repo as a variant (its config fetched, phase one), or why the repo is not audited."""
    import json

    from ..inputs.hub import METADATA_FILES, resolve

    if "config.json" not in files:
        return None, "no GGUF file and no model config at the top level" + (" in the local cache" if offline else "")
    repo = resolve(repo_id, cache_dir=cache_dir, offline=offline, patterns=METADATA_FILES)
    config = json.loads((repo.path / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method in ("gptq", "awq"):
        return PublishedCheckpoint(repo_id=repo_id, method=method, quant_config=quant, path=repo.path,
                                   commit=repo.commit), ""
    if method == "bitsandbytes":
        return None, ("a bitsandbytes checkpoint: not audited (transformers 5.23 with bitsandbytes 0.50 on CPU does "
                      "not reload saved 4-bit weights as they were; test bnb:nf4/bnb:fp4 instead)")
    return None, f"no GGUF file and no GPTQ/AWQ checkpoint (quant_method: {method or 'none'})"


def _file_type(path: Path) -> str | None:
    """The GGUF file's ``general.file_type``, read with gguf's Python reader (never llama.cpp's C parser); a file
    it cannot parse is bad input, named, not a crash."""
    import gguf

    try:
        field_ = gguf.GGUFReader(str(path)).fields.get("general.file_type")
        if field_ is None:
            return None
        return GGUF_FILE_TYPES.get(int(field_.parts[-1][0]))
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, MemoryError) as exc:
        raise InputError(f"{path.name} is not a readable GGUF file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})",
                         "download it again, or leave this repository out of --published") from None


@dataclass
class PublishedVariant:
    """What every published derivative shares as a variant: its repo, and the folder and commit it was fetched
    to in phase two; no grid the diagnostic can refit (``fixed_grid`` False), no transformers load config."""

    repo_id: str
    path: Path | None = field(default=None, kw_only=True)
    commit: str | None = field(default=None, kw_only=True)
    fixed_grid = False

    def load_config(self) -> Any:
        return None

    def fetched(self, path: Path, commit: str | None) -> None:
        """Phase two: the files are on disk."""
        self.path, self.commit = path, commit


@dataclass
class PublishedGGUF(PublishedVariant):
    """One published GGUF file as a variant: the unlearned model runs the file's own weights; the original
    (and the reference model) run llama.cpp's quantization with the file's file type."""

    filename: str
    kind: str | None = None
    stage = "weights"
    writes_scratch = True
    kept_as = "gguf"
    not_compared_reason = ("a published file: compared block by block with the original quantized to the file's "
                           "type in the audit (after its probes), when the file names a type llama.cpp reproduces")

    @property
    def compared_after(self) -> bool:
        """The file and the original quantized by llama.cpp to its type are kept and compared afterwards."""
        return self.kind is not None

    @property
    def label(self) -> str:
        return f"published:{self.repo_id}/{self.filename}"

    @property
    def bits(self) -> int:
        from .gguf import FILE_TYPES

        return FILE_TYPES[self.kind][1] if self.kind in FILE_TYPES else 16

    def require(self) -> None:
        from .gguf import GGUFQuantizer

        GGUFQuantizer("q8_0").require()

    def settings(self) -> dict[str, Any]:
        return {"method": "published gguf", "repo": self.repo_id, "file": self.filename, "commit": self.commit,
                "file_type": self.kind, "bits": self.bits}

    def fetched(self, path: Path, commit: str | None) -> None:
        """Phase two: the file is on disk; its file type read from its metadata."""
        super().fetched(path, commit)
        self.kind = _file_type(path)

    def apply(self, model: nn.Module, workdir: Path | None = None, save_to: Path | None = None) -> QuantResult:
        return self.apply_role("unlearned", model, workdir, save_to)

    def apply_role(self, role: str, model: nn.Module, workdir: Path | None = None,
                   save_to: Path | None = None) -> QuantResult:
        """The unlearned model: the published file's tensors; the original: quantized by llama.cpp to the
        file's type. ``save_to`` keeps each side's file (the published one linked) for the diagnostic."""
        from .gguf import TENSOR_BITS, GGUFQuantizer, gguf_names, keep_file, read_quantized

        if self.path is None:
            raise QuantizationError(f"{self.label} was not fetched", "a bug if you see this")
        if role != "unlearned":
            if self.kind is None:
                raise QuantizationError(f"{self.filename} names no llama.cpp file type the tool can reproduce",
                                        "leave it out with --published-files")
            result = GGUFQuantizer(self.kind).apply(model, workdir, save_to)
            settings = {**self.settings(), **{k: v for k, v in result.settings.items() if k not in ("method", "bits")},
                        "reproduced": f"llama.cpp file type {self.kind.upper()} on this model"}
            return QuantResult(label=self.label, settings=settings, proof=result.proof)
        mapping = gguf_names(model)
        read = read_quantized(self.path, model, mapping)
        if save_to is not None:
            keep_file(self.path, save_to, mapping, model, link=True)
        quantized = {n: t for n, t in read.types.items() if t in TENSOR_BITS}
        widest = max((TENSOR_BITS[t] for t in quantized.values()), default=self.bits)
        proof = QuantProof(layers_quantized=len([n for n in quantized if n != "token_embd.weight"]),
                           layers_skipped=[], groups_checked=read.blocks_checked,
                           max_levels=max(read.max_levels.values(), default=0), allowed_levels=2 ** widest)
        counts: dict[str, int] = {}
        for kind in read.types.values():
            counts[kind] = counts.get(kind, 0) + 1
        settings = {**self.settings(), "tensor_types": dict(sorted(counts.items())), "tensor_bits_max": widest,
                    "types_by_tensor": {mapping[n]: t for n, t in sorted(read.types.items())
                                        if not n.endswith("norm.weight")}}
        return QuantResult(label=self.label, settings=settings, proof=verify_proof(self.label, proof))


@dataclass
class PublishedCheckpoint(PublishedVariant):
    """A published GPTQ/AWQ repo as a variant: the unlearned model is the checkpoint, loaded through
    transformers as its users load it. The publisher's calibration is unknown, so the original is not
    quantized the same way: its runs for this variant are its full-precision runs (the record says so)."""

    method: str
    quant_config: dict[str, Any]
    stage = "published"
    not_compared_reason = ("a published GPTQ/AWQ checkpoint: the publisher's calibration is unknown, so the "
                           "original cannot be quantized the same way")

    @property
    def label(self) -> str:
        return f"published:{self.repo_id}/*"

    @property
    def bits(self) -> int:
        return int(self.quant_config.get("bits", 4))

    @property
    def group_size(self) -> int:
        return int(self.quant_config.get("group_size", 128))

    def require(self) -> None:
        from .calibrated import _gptqmodel

        _gptqmodel()

    def settings(self) -> dict[str, Any]:
        return {"method": f"published {self.method}", "repo": self.repo_id, "commit": self.commit, "bits": self.bits,
                "group_size": self.group_size, "file_type": f"{self.method}:{self.bits}:g{self.group_size}",
                "original": "its full-precision runs (the publisher's calibration cannot be reproduced)"}

    def apply(self, model: nn.Module) -> QuantResult:
        raise QuantizationError(f"{self.label} is loaded from its repo, not applied", "a bug if you see this")

    def load(self, *, device: str, tokenizer: Any, trust_remote_code: bool) -> tuple[nn.Module, QuantResult]:
        """The checkpoint through transformers, and the proof (packed codes counted in its safetensors)."""
        from transformers import AutoModelForCausalLM

        from .calibrated import CalibratedQuantizer, checkpoint_levels

        method = CalibratedQuantizer(method=self.method, bits=self.bits, group_size=self.group_size,
                                     symmetric=self.quant_config.get("sym"),
                                     act_order=bool(self.quant_config.get("desc_act", False)))
        dtype = method.compute_dtype(device)
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, device_map={"": device},
                                                     trust_remote_code=trust_remote_code)
        model.eval()
        packed = checkpoint_levels(self.path, self.bits, self.group_size, 0 if self.method == "gptq" else 1)
        result = method._prove(model, *packed)
        return model, QuantResult(label=self.label, settings={**result.settings, **self.settings()},
                                  proof=result.proof)
