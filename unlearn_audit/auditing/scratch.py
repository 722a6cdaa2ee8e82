"""An audit's scratch folder: quantized checkpoints kept for the diagnostic, GGUF files, library offloads and the
folders vLLM serves from; its size estimated and checked against the disk before any work, and the folders of
audits that died removed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import RuntimeFailure
from ..quantize import Quantizer


def scratch_bytes(n_parameters: int, kept: list[Quantizer], models: int, gguf: bool = False) -> int:
    """Disk an audit with kept variants writes: each kept variant's checkpoint of every model, kept until the end
    for the diagnostic (the codes, scales and the unquantized tensors: about bits/8 + 10% per parameter plus
    two bytes per parameter for a 16-bit lm_head and embeddings, taken as 15%), and the largest transient file:
    GPT-QModel's offload of the model being quantized (16-bit, two bytes per parameter) or the full-precision GGUF
    file llama.cpp quantizes from (float32, four)."""
    stored = sum(n_parameters * (getattr(q, "bits", 16) / 8 * 1.1 + 0.15 * 2) for q in kept) * models
    transient = 4 if gguf else 2 if kept else 0
    return int(stored + transient * n_parameters)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse before quantizing when ``folder``'s disk has less free space than ``needed`` bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RuntimeFailure(f"the quantized checkpoints this audit keeps need about {needed / 1e9:.1f} GB of scratch "
                             f"space in {folder.parent}, which has {free / 1e9:.1f} GB free", "pass --scratch DIR on a "
                             "larger disk, or test fewer gptq/awq/gguf variants")


def make_scratch(root: Path) -> Path:
    """A working folder for this audit (``scratch-<pid>-*``), after removing those of audits that died
    (killed processes cannot clean up after themselves)."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("scratch-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"scratch-{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def saved_checkpoint(scratch: Path, role: str, label: str) -> Path:
    """Where a kept variant of one model lies in the scratch folder."""
    return scratch / role / label.replace(":", "_")


def compared_after(quantizer: Quantizer) -> bool:
    """GPTQ/AWQ, GGUF k-quants and published GGUF files: the diagnostic compares the two quantized
    checkpoints the audit made (their grids depend on data or on a search), so the audit keeps them."""
    return quantizer.stage == "calibrate" or bool(getattr(quantizer, "compared_after", False))


def open_scratch(quantizers: list[Quantizer], n_parameters: int, models: int, engine: str, root: Path) -> Path | None:
    """The audit's scratch folder under ``root`` when it needs one (kept checkpoints, offloads, GGUF files, vLLM's
    folders), after checking the disk has room for it; None when it does not."""
    kept = [q for q in quantizers if compared_after(q)]
    writing = [q for q in quantizers if getattr(q, "writes_scratch", False)]
    if not (kept or writing or engine == "vllm"):
        return None
    scratch = make_scratch(root)
    check_free_space(scratch, scratch_bytes(n_parameters, kept, models, gguf=bool(writing))
                     + (4 * n_parameters if engine == "vllm" else 0))
    return scratch
