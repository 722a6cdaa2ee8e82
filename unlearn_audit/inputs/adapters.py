"""Adapter checkpoints (LoRA and the other peft methods): audited as what users run.

A repo with ``adapter_config.json`` (the quantization paper's own ``ga_lora`` runs, many community
unlearned models) is audited as its base model (named by ``base_model_name_or_path``) with the adapter
merged into it through ``peft`` (``merge_and_unload``). The merged model is written once as a safetensors
folder (under the result cache's ``merged/``), so loading, in-place quantization and its restore, the
quantization libraries and the weight diagnostic all see an ordinary checkpoint. The original model
defaults to the adapter's base. Pickled adapter weights follow the same rule as models.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, RuntimeFailure, UnsafeModelError
from ..support.noise import import_peft
from .hub import ResolvedRepo

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def adapter_settings(folder: Path, label: str) -> dict[str, Any]:
    try:
        return json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{label}'s {ADAPTER_CONFIG} is not valid JSON ({exc})", "fix or re-upload the adapter") from None


def adapter_base(folder: Path, label: str) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path``)."""
    base = adapter_settings(folder, label).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise InputError(f"the adapter {label} does not name its base model (base_model_name_or_path)",
                         "add it to adapter_config.json, or merge the adapter and audit the merged model")
    return base


def check_adapter_files(folder: Path, *, allow_pickle: bool, label: str) -> None:
    """The adapter's weights: safetensors, or pickles only when allowed."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.startswith("adapter_model") and n.endswith(".safetensors") for n in names):
        return
    if any(n.startswith("adapter_model") and n.endswith((".bin", ".pt", ".pth")) for n in names):
        if not allow_pickle:
            raise UnsafeModelError(f"{label} has only pickled adapter weights (adapter_model.bin), which can run code "
                                   "when loaded", "ask the publisher for safetensors, or pass --allow-pickle if you trust it")
        return
    raise InputError(f"{label} has no adapter weights (adapter_model.safetensors)", "check that the repo holds the adapter")


@dataclass(frozen=True)
class MergedAdapter:
    """Where an adapter was merged, and from what (recorded in the report)."""

    adapter: ResolvedRepo
    base: ResolvedRepo
    folder: Path
    peft_version: str
    peft_type: str
    identity: str
    """The merge's identity (from the adapter's and base's commits or folder fingerprints): its folder name
    and the commit the result cache keys on."""

    def as_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter.as_dict(), "base": self.base.as_dict(), "merged_folder": str(self.folder),
                "peft_version": self.peft_version, "peft_type": self.peft_type}

    def as_repo(self) -> ResolvedRepo:
        """The merged checkpoint, under the adapter's name; its identity is the adapter's and base's commits."""
        return ResolvedRepo(reference=self.adapter.reference, kind="model", source="merged", path=self.folder,
                            repo_id=self.adapter.repo_id, revision=self.adapter.revision,
                            commit=self.identity)


def _identity(adapter: ResolvedRepo, base: ResolvedRepo) -> str:
    from .hub import fingerprint_folder

    parts = []
    for repo in (adapter, base):
        parts.append(repo.commit or json.dumps(fingerprint_folder(repo.path), sort_keys=True))
    return "merged-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def merge_adapter(adapter: ResolvedRepo, base: ResolvedRepo, root: Path, *, trust_remote_code: bool) -> MergedAdapter:
    """Merge ``adapter`` into ``base`` (both with their weights) and save it as safetensors under ``root``
    (reused when already there). The merge runs in the base's stored dtype."""
    try:
        peft = import_peft()  # GPT-QModel, which peft imports on first use, quietly
    except ImportError:
        raise InputError("auditing an adapter needs the peft package", "pip install peft") from None
    import torch
    from transformers import AutoModelForCausalLM

    identity = _identity(adapter, base)
    folder = Path(root) / identity
    settings = adapter_settings(adapter.path, adapter.reference)
    info = MergedAdapter(adapter=adapter, base=base, folder=folder, peft_version=peft.__version__,
                         peft_type=str(settings.get("peft_type", "LORA")), identity=identity)
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return info
    stored = json.loads((base.path / "config.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, str(stored.get("dtype") or stored.get("torch_dtype") or "float32"), torch.float32)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype, trust_remote_code=trust_remote_code)
        merged = peft.PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
        merged.save_pretrained(partial, safe_serialization=True)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeFailure(f"cannot merge the adapter {adapter.reference} into {base.reference}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             "check that the adapter was trained on that base model") from None
    partial.rename(folder)
    return info
