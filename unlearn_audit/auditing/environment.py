"""What an audit records of the machine it ran on, and what of it changes results (the result cache's key): the
numeric libraries' versions, the accelerator model, and in 16-bit dtypes the batching."""

from __future__ import annotations

from typing import Any

from ..config import AuditConfig

PACKAGES = ("torch", "transformers", "huggingface_hub", "safetensors", "tokenizers", "numpy", "rouge-score",
            "scikit-learn", "bitsandbytes")
"""The libraries whose versions every record lists."""


def library_versions() -> dict[str, str]:
    """The installed version of each of :data:`PACKAGES` (those not installed left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def reproducibility_key(config: AuditConfig, dtype: str) -> dict[str, Any]:
    """What else changes results, for the cache key: the numeric libraries' versions and the accelerator
    model (kernels differ); and in 16-bit dtypes, where batched scores are not batch-invariant (padding
    changes the kernels' reduction order), the requested batch size and device map."""
    import torch

    versions = library_versions()
    key: dict[str, Any] = {"libraries": {n: versions.get(n) for n in ("torch", "transformers", "tokenizers")}}
    if config.device.startswith("cuda") and torch.cuda.is_available():
        key["accelerator"] = torch.cuda.get_device_name(torch.device(config.device))
    if dtype != "float32":
        key["batching"] = {"batch_size": config.probes.batch_size, "device_map": config.device_map}
    return key
