"""Inference engines the probes run on, behind one interface (:class:`.base.InferenceEngine`), and their registry.

``hf`` (:mod:`.hf`) runs the model with transformers; ``vllm`` (:mod:`.vllm`) serves the variant's weights from a
folder with vLLM. Both are imported only when chosen (importing this package loads neither torch nor vLLM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import InferenceEngine


def _hf(*args: Any, **kwargs: Any) -> InferenceEngine:
    from .hf import HFEngine

    return HFEngine(*args, **kwargs)


def _vllm(*args: Any, **kwargs: Any) -> InferenceEngine:
    from .vllm import VLLMEngine

    return VLLMEngine(*args, **kwargs)


ENGINES: dict[str, Callable[..., InferenceEngine]] = {"hf": _hf, "vllm": _vllm}
"""``--engine`` names: ``hf`` runs the model with transformers (every quantizer's model is a transformers
model); ``vllm`` serves the variant's weights from a folder with vLLM (see :mod:`.vllm`). Add a
backend by implementing :class:`InferenceEngine` and registering a factory here."""
