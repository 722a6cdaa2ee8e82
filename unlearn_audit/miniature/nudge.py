"""A copy of a checkpoint with every linear weight moved by a tiny relative amount.

``w' = w * (1 + rel * s)`` with seeded random signs ``s = +-1``: the regime the quantization paper found
in 7B models (a dense update far below one quantization step). Used by the tests and benchmarks to check
that the weight diagnostic reads that regime right, and to make a real model's "unlearned" twin.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

LINEAR_SKIP = ("lm_head", "embed", "wte", "wpe", "norm", "ln_")
"""Tensor names left unchanged (embeddings, norms, the output head): only linear layers move."""


def nudge_checkpoint(src: Path, dst: Path, rel: float = 1e-4, seed: int = 0) -> Path:
    """Copy the model folder ``src`` to ``dst``, moving every 2-D linear weight by ``rel * |w|`` with a
    seeded random sign (embeddings, norms and ``lm_head`` unchanged). Returns ``dst``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    for file in sorted(src.glob("*.safetensors")):
        tensors, metadata = {}, None
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata()
            for name in handle.keys():
                t = handle.get_tensor(name)
                if t.ndim == 2 and name.endswith(".weight") and not any(s in name for s in LINEAR_SKIP):
                    sign = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.int8).to(t.dtype) * 2 - 1
                    t = (t.float() * (1 + rel * sign.float())).to(t.dtype)
                tensors[name] = t.contiguous()
        save_file(tensors, str(dst / file.name), metadata=metadata)
    return dst
