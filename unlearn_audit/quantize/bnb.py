"""bitsandbytes' own formats, loaded exactly as a user would: ``from_pretrained(quantization_config=
BitsAndBytesConfig(...))``. FP4 and NF4 (absmax per block of 64, optional double quantization) and
LLM.int8 (row-wise absmax int8, outlier threshold 6.0). bitsandbytes >= 0.49 runs these on CPU.

The quantization paper's "RTN 4-bit" is ``load_in_4bit=True`` with that era's defaults, i.e. FP4, blocks
of 64, no double quantization; its 8-bit is LLM.int8 (``--quant paper`` selects both).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .base import QuantProof, QuantResult, max_distinct, verify_proof

INSTALL = "pip install 'bitsandbytes>=0.49'"
_BLOCK = 64
"""bitsandbytes' 4-bit block size (transformers' default, and the quantization paper's)."""
_CPU_PACK_BLOCK = 32
"""bitsandbytes' packed 4-bit CPU kernel needs out_features divisible by this (its ``block_n``)."""


def _bnb():  # noqa: ANN202
    try:
        import bitsandbytes
        import bitsandbytes.functional
    except ImportError:
        raise InputError("the bitsandbytes quantizers need the bitsandbytes package", f"run {INSTALL}") from None
    return bitsandbytes


@dataclass(frozen=True)
class BnbQuantizer:
    """One bitsandbytes format: ``fp4``, ``nf4`` (4-bit, optional double quantization) or ``int8``."""

    kind: str = "fp4"
    double_quant: bool = False
    int8_threshold: float = 6.0
    fixed_grid = True
    stage = "load"
    """transformers quantizes while loading; ``apply`` only inspects and proves."""

    def __post_init__(self) -> None:
        if self.kind not in ("fp4", "nf4", "int8"):
            raise InputError(f"unknown bitsandbytes format '{self.kind}'", "use bnb:fp4, bnb:nf4 or bnb:int8")
        if self.kind == "int8" and self.double_quant:
            raise InputError("double quantization applies to 4-bit formats only", "use bnb:fp4:dq or bnb:nf4:dq")

    @property
    def label(self) -> str:
        return f"bnb:{self.kind}" + (":dq" if self.double_quant else "")

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4

    def require(self) -> None:
        _bnb()
        try:
            import accelerate  # noqa: F401  (transformers needs it to load quantized models)
        except ImportError:
            raise InputError("loading bitsandbytes models needs the accelerate package",
                             "run pip install accelerate") from None

    def settings(self) -> dict[str, Any]:
        base = {"method": "bitsandbytes", "library_version": _bnb().__version__, "format": self.kind,
                "layers": "every nn.Linear except lm_head (transformers' default)"}
        if self.kind == "int8":
            return {**base, "bits": 8, "scheme": "LLM.int8: row-wise absmax int8 with fp16 outliers",
                    "outlier_threshold": self.int8_threshold}
        return {**base, "bits": 4, "scheme": f"{self.kind.upper()} code book, absmax per block of 64",
                "block_size": 64, "double_quant": self.double_quant, "compute_dtype": "float32"}

    def load_config(self) -> Any:
        """The ``quantization_config`` transformers needs to load a model in this format."""
        _bnb()
        from transformers import BitsAndBytesConfig

        if self.kind == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.kind,
                                  bnb_4bit_use_double_quant=self.double_quant, bnb_4bit_compute_dtype=torch.float32)

    @torch.no_grad()
    def fit_grid(self, weight: torch.Tensor) -> BlockCodebookGrid | RowGrid:
        """The grid bitsandbytes fits to ``weight`` [out, in] (for the weight-level diagnostic): 4-bit as
        absmax per block of 64 consecutive elements of the flattened matrix and the nearest value of the
        format's code book (how bitsandbytes assigns codes); int8 as LLM.int8 quantizes weights (row-wise
        absmax, 127 levels each side; its outlier split acts on activations, not weights)."""
        w = weight.detach().float()
        if self.kind == "int8":
            return RowGrid(w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127, w.shape)
        code = torch.unique(_bnb().functional.get_4bit_type(self.kind, device="cpu").float()).to(w.device)
        blocks = _blocks(w, _BLOCK)
        return BlockCodebookGrid(blocks.abs().amax(dim=-1, keepdim=True), code, w.shape)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> QuantResult:
        """Prove that ``model`` (loaded with :meth:`load_config`) holds this format's layers."""
        bnb = _bnb()
        quantized, skipped, groups, max_levels = 0, [], 0, 0
        generic: list[str] = []
        for name, module in model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit) and self.kind != "int8":
                odd = module.out_features % _CPU_PACK_BLOCK or module.in_features % _BLOCK
                if odd and getattr(module, "support_avx512bf16_for_cpu", False):
                    # bitsandbytes' packed CPU kernel (AVX512-BF16 machines) needs out_features % 32 == 0 and
                    # in_features % 64 == 0 (one absmax row per block) and dies on real widths (a 172-wide
                    # MLP); its generic path computes the same dequantize-then-matmul for such a layer.
                    module.support_avx512bf16_for_cpu = False
                    generic.append(name)
                state = module.weight.quant_state
                if state.quant_type != self.kind or state.blocksize != 64:
                    continue
                dense = bnb.functional.dequantize_4bit(module.weight.data, state).reshape(-1, state.blocksize)
                max_levels = max(max_levels, max_distinct(dense))
                groups += dense.shape[0]
                quantized += 1
            elif isinstance(module, bnb.nn.Linear8bitLt) and self.kind == "int8":
                weight = module.weight.data
                if weight.dtype != torch.int8:
                    continue
                max_levels = max(max_levels, max_distinct(weight.to(torch.int16)))
                groups += weight.shape[0]
                quantized += 1
            elif type(module) is nn.Linear:
                skipped.append(name)
        allowed = 255 if self.kind == "int8" else 16
        proof = QuantProof(layers_quantized=quantized, layers_skipped=skipped, groups_checked=groups,
                           max_levels=max_levels, allowed_levels=allowed)
        settings = self.settings()
        if generic:
            settings["cpu_generic_kernel_layers"] = generic
        return QuantResult(label=self.label, settings=settings, proof=verify_proof(self.label, proof))


def _blocks(weight: torch.Tensor, block: int) -> torch.Tensor:
    """The flattened matrix as [n_blocks, block], zero-padded at the end (zeros change no absmax)."""
    flat = weight.reshape(-1)
    extra = -flat.numel() % block
    if extra:
        flat = torch.cat([flat, flat.new_zeros(extra)])
    return flat.reshape(-1, block)


@dataclass(frozen=True)
class BlockCodebookGrid:
    """bitsandbytes 4-bit: ``w' = absmax * code[level]`` per block of consecutive elements."""

    absmax: torch.Tensor
    """[n_blocks, 1]"""
    code: torch.Tensor
    """the format's code book, sorted, distinct values"""
    shape: torch.Size

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = _blocks(weight.float(), _BLOCK)
        scaled = blocks / torch.where(self.absmax > 0, self.absmax, torch.ones_like(self.absmax))
        mids = (self.code[1:] + self.code[:-1]) / 2
        levels = torch.bucketize(scaled, mids)
        return levels.reshape(-1)[: self.shape.numel()].reshape(self.shape)

    def dequantize(self, levels: torch.Tensor) -> torch.Tensor:
        """``absmax * code[level]`` per weight, shaped like ``levels``."""
        values = _blocks(self.code[levels.long()].float(), _BLOCK) * self.absmax
        return values.reshape(-1)[: self.shape.numel()].reshape(self.shape)

    def steps(self) -> torch.Tensor:
        spacing = (self.code[-1] - self.code[0]) / (len(self.code) - 1)
        per_block = (self.absmax * spacing).expand(-1, _BLOCK)
        return per_block.reshape(-1)[: self.shape.numel()].reshape(self.shape)

    def params(self) -> torch.Tensor:
        return self.absmax


@dataclass(frozen=True)
class RowGrid:
    """LLM.int8 weights: ``w' = scale * round(w / scale)`` with a row-wise absmax scale, levels -127..127."""

    scale: torch.Tensor
    """[out, 1]"""
    shape: torch.Size

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.round(weight.float() / self.scale).clamp(-127, 127)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes * self.scale

    def steps(self) -> torch.Tensor:
        return self.scale.expand(self.shape)

    def params(self) -> torch.Tensor:
        return self.scale


def quiet_bnb_warnings() -> None:
    """bitsandbytes logs a warning on every int8 matmul on CPU (inputs cast to fp16) and one about an
    optional CPU kernel package; neither changes results, and the settings are in the report."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
