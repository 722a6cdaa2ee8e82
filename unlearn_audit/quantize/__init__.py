"""Quantizers behind one interface, and the ``--quant`` variant syntax.

Variant syntax: ``METHOD:SETTING[:OPTION...]``, e.g. ``rtn:4`` (group 128, asymmetric),
``rtn:3:g64``, ``rtn:4:g128:sym``, ``rtn:8:head`` (also quantize ``lm_head``), ``bnb:fp4``,
``bnb:nf4:dq`` (double quantization), ``bnb:int8``, ``gguf:q4_k_m`` (llama.cpp file types), ``fp8`` (``fp8:block128``, ``fp8:channel``,
``fp8:tensor``, ``:ue8m0``), ``mxfp4``, ``nvfp4``, ``mlx:4:g64``, ``hqq:4:g64``, ``gptq:4`` (group 128, symmetric), ``gptq:4:g64:act``
(act-order), ``awq:4`` (group 128, zero point). ``paper`` names the quantization paper's attack:
``bnb:fp4`` and ``bnb:int8``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..support.items import parse_items
from .base import QuantProof, QuantResult, Quantizer
from .bnb import BnbQuantizer
from .calibrated import CalibratedQuantizer
from .floats import FP8_TILES, FloatFormatQuantizer
from .hqq import HQQQuantizer
from .mlx_affine import MLXAffineQuantizer
from .gguf import FILE_TYPES, GGUFQuantizer
from .rtn import RTNQuantizer


@dataclass(frozen=True)
class MethodInfo:
    """A registered quantization method: how to build it from a variant string, and what it needs."""

    name: str
    summary: str
    example: str
    needs: str
    build: Callable[[Any, list[str]], Quantizer]
    contract_variants: tuple[str, ...] = ()
    """Variants the contract tests run for this method (every registered method must list some)."""


def _group_size(option: str) -> int | None:
    """The group size an option ``gN`` names, else None."""
    return int(option[1:]) if option.startswith("g") and option[1:].isdigit() else None


def _build_rtn(bits: int, options: list[str]) -> Quantizer:
    group, symmetric, head = 128, False, False
    for opt in options:
        if (size := _group_size(opt)) is not None:
            group = size
        elif opt == "sym":
            symmetric = True
        elif opt == "asym":
            symmetric = False
        elif opt == "head":
            head = True
        else:
            raise UsageError(f"unknown RTN option '{opt}'", "use gN (group size), sym, asym or head, e.g. rtn:4:g128")
    return RTNQuantizer(bits=bits, group_size=group, symmetric=symmetric, include_lm_head=head)


def _build_bnb(kind: str, options: list[str]) -> Quantizer:
    unknown = [o for o in options if o != "dq"]
    if unknown:
        raise UsageError(f"unknown bitsandbytes option '{unknown[0]}'", "use dq (double quantization), e.g. bnb:nf4:dq")
    return BnbQuantizer(kind=kind, double_quant="dq" in options)


def _build_gguf(kind: str, options: list[str]) -> Quantizer:
    if options:
        raise UsageError(f"unknown GGUF option '{options[0]}'", "write a llama.cpp file type alone, e.g. gguf:q4_k_m")
    return GGUFQuantizer(kind=kind)


def _build_fp8(tile: str | None, options: list[str]) -> Quantizer:
    unknown = [o for o in options if o != "ue8m0"]
    if unknown:
        raise UsageError(f"unknown FP8 option '{unknown[0]}'", "use ue8m0 (power-of-two scales), e.g. fp8:block128:ue8m0")
    if tile is not None and tile not in FP8_TILES:
        raise UsageError(f"unknown FP8 tiling '{tile}'", f"use one of {', '.join(FP8_TILES)}, e.g. fp8:block128")
    return FloatFormatQuantizer(format="fp8", tile=tile or "block128", ue8m0="ue8m0" in options)


def _build_mlx(bits: int, options: list[str]) -> Quantizer:
    group, rounding = 64, "metal"
    for opt in options:
        if (size := _group_size(opt)) is not None:
            group = size
        elif opt in ("cpu", "metal"):
            rounding = opt
        else:
            raise UsageError(f"unknown MLX option '{opt}'", "use gN (group size 32, 64 or 128) or cpu (MLX's CPU "
                             "rounding), e.g. mlx:4:g64")
    return MLXAffineQuantizer(bits=bits, group_size=group, rounding=rounding)


def _build_hqq(bits: int, options: list[str]) -> Quantizer:
    group = 64
    for opt in options:
        if (size := _group_size(opt)) is not None:
            group = size
        else:
            raise UsageError(f"unknown HQQ option '{opt}'", "use gN (group size, a multiple of 8), e.g. hqq:4:g64")
    return HQQQuantizer(bits=bits, group_size=group)


def _build_fp4(name: str) -> Callable[[Any, list[str]], Quantizer]:
    def build(setting: str | None, options: list[str]) -> Quantizer:
        extra = [x for x in (setting, *options) if x is not None]
        if extra not in ([], ["mlx"]):
            bad = next((x for x in extra if x != "mlx"), extra[-1])
            raise UsageError(f"unknown {name} setting '{bad}'", f"write {name} (OCP's rule) or {name}:mlx (MLX's)")
        return FloatFormatQuantizer(format=name, producer="mlx" if extra else "ocp")
    return build


def _calibrated(method: str) -> Callable[[int, list[str]], Quantizer]:
    def build(bits: int, options: list[str]) -> Quantizer:
        group, symmetric, act = 128, None, False
        for opt in options:
            if (size := _group_size(opt)) is not None:
                group = size
            elif opt in ("sym", "asym"):
                symmetric = opt == "sym"
            elif opt == "act":
                act = True
            else:
                raise UsageError(f"unknown {method.upper()} option '{opt}'",
                                 f"use gN (group size), sym, asym{' or act' if method == 'gptq' else ''}, "
                                 f"e.g. {method}:4:g128")
        return CalibratedQuantizer(method=method, bits=bits, group_size=group, symmetric=symmetric, act_order=act)
    return build


PRESETS = {"paper": ("bnb:fp4", "bnb:int8"),
           "deploy": ("gguf:q4_k_m", "gguf:q8_0", "bnb:nf4", "fp8:block128", "fp8:channel", "mxfp4", "nvfp4")}
"""Named sets of variants. ``paper``: Zhang et al.'s 4-bit (bnb FP4, blocks of 64, no double
quantization) and 8-bit (LLM.int8) attacks. ``deploy``: one variant of each format family known to be published
(a judgement: neither Hub counts nor the producers' pages could be read here; docs/quantizers.md): llama.cpp's
Q4_K_M and Q8_0, bitsandbytes NF4, FP8 in 128x128 blocks and per channel, MXFP4 and NVFP4. Calibrated methods (GPTQ,
AWQ) are left out: they need an extra and calibration text."""

METHODS: dict[str, MethodInfo] = {
    "rtn": MethodInfo(
        name="rtn",
        summary="round-to-nearest per group of input columns, 2-8 bits, asymmetric (default) or symmetric",
        example="rtn:4:g128",
        needs="nothing beyond torch; runs on CPU",
        build=_build_rtn,
        contract_variants=("rtn:4:g128", "rtn:3:g64:sym", "rtn:8:head"),
    ),
    "bnb": MethodInfo(
        name="bnb",
        summary="bitsandbytes as transformers loads it: fp4 or nf4 (absmax per block of 64, :dq for double "
                "quantization) and int8 (LLM.int8, outlier threshold 6.0); `paper` = bnb:fp4,bnb:int8",
        example="bnb:fp4",
        needs="bitsandbytes >= 0.49 (a dependency; runs on CPU) and accelerate",
        build=_build_bnb,
        contract_variants=("bnb:fp4", "bnb:nf4:dq", "bnb:int8"),
    ),
    "gptq": MethodInfo(
        name="gptq",
        summary="GPTQ through GPT-QModel: 2, 3, 4 or 8 bits, groups of 128 (gN), symmetric (asym for a zero point), "
                ":act for act-order; calibrated on --calibration text (generic by default)",
        example="gptq:4:g128",
        needs="GPT-QModel: pip install -c constraints.txt 'unlearn-audit[gptq]' (torch kernels on CPU)",
        build=_calibrated("gptq"),
        contract_variants=("gptq:4", "gptq:3:g64:asym"),
    ),
    "awq": MethodInfo(
        name="awq",
        summary="AWQ through GPT-QModel: 4 bits, groups of 128 (gN), zero point (sym for none), GEMM layout; "
                "calibrated on --calibration text (generic by default)",
        example="awq:4:g128",
        needs="GPT-QModel: pip install -c constraints.txt 'unlearn-audit[gptq]' (torch AWQ kernel on CPU)",
        build=_calibrated("awq"),
        contract_variants=("awq:4", "awq:4:g64:sym"),
    ),
    "fp8": MethodInfo(
        name="fp8",
        summary="FP8 E4M3 weights, scale amax/448 per 128x128 block (default, DeepSeek-V3/Qwen3), per output channel "
                "(fp8:channel) or per tensor (fp8:tensor); :ue8m0 for power-of-two scales (DeepSeek-V3.1)",
        example="fp8:block128",
        needs="nothing beyond torch; runs on CPU",
        build=_build_fp8,
        contract_variants=("fp8:block128", "fp8:channel:ue8m0", "fp8:tensor"),
    ),
    "mxfp4": MethodInfo(
        name="mxfp4",
        summary="OCP MXFP4: E2M1 elements, one power-of-two (E8M0) scale per 32, 2**(floor(log2(amax)) - 2); "
                "mxfp4:mlx as MLX makes it (2**ceil(log2(amax / 6)), ties toward zero)",
        example="mxfp4",
        needs="nothing beyond torch; runs on CPU",
        build=_build_fp4("mxfp4"),
        contract_variants=("mxfp4", "mxfp4:mlx"),
    ),
    "nvfp4": MethodInfo(
        name="nvfp4",
        summary="NVIDIA NVFP4: E2M1 elements, an E4M3 scale per 16 and a float32 per-tensor scale; nvfp4:mlx as MLX "
                "makes it (no per-tensor scale, ties toward zero)",
        example="nvfp4",
        needs="nothing beyond torch; runs on CPU",
        build=_build_fp4("nvfp4"),
        contract_variants=("nvfp4", "nvfp4:mlx"),
    ),
    "mlx": MethodInfo(
        name="mlx",
        summary="MLX affine (mlx-community's 4-bit models): 2-8 bits, groups of 64 (g32, g128), min-max with the "
                "larger edge exact, rounded as Metal does (:cpu as MLX's CPU backend); every linear layer and the embedding "
                "whose width the group divides",
        example="mlx:4:g64",
        needs="nothing beyond torch; runs on CPU (checked against the mlx wheel where it installs)",
        build=_build_mlx,
        contract_variants=("mlx:4:g64", "mlx:3:g32:cpu"),
    ),
    "hqq": MethodInfo(
        name="hqq",
        summary="HQQ through the hqq package: 2, 3, 4 or 8 bits, groups of 64 (gN) of the flattened matrix, its "
                "proximal optimiser (no calibration data)",
        example="hqq:4:g64",
        needs="hqq: pip install -c constraints.txt 'unlearn-audit[hqq]' (runs on CPU)",
        build=_build_hqq,
        contract_variants=("hqq:4:g64",),
    ),
    "gguf": MethodInfo(
        name="gguf",
        summary="llama.cpp's file types as users download them (" + ", ".join(FILE_TYPES) + "): converted to "
                "GGUF, quantized by llama.cpp (its per-tensor mixes included), read back into the model",
        example="gguf:q4_k_m",
        needs="llama.cpp's quantizer: pip install -c constraints.txt 'unlearn-audit[gguf]' (builds llama-cpp-python "
              "from source: cmake and a C compiler; `make gguf`)",
        build=_build_gguf,
        contract_variants=("gguf:q8_0", "gguf:q4_k_m", "gguf:iq4_xs"),
    ),
}


def parse_variant(text: str) -> Quantizer:
    """Build the quantizer named by one ``--quant`` item."""
    parts = [p.strip() for p in text.strip().lower().split(":") if p.strip()]
    if not parts:
        raise UsageError("empty --quant item", "give variants like rtn:8,rtn:4")
    method = METHODS.get(parts[0])
    if method is None:
        raise UsageError(f"unknown quantization method '{parts[0]}' in '{text}'",
                         f"use one of: {', '.join(sorted(METHODS))} (see `unlearn-audit quantizers`)")
    if method.name == "bnb":
        if len(parts) < 2:
            raise UsageError(f"'{text}' names no bitsandbytes format", "write it as bnb:fp4, bnb:nf4 or bnb:int8")
        return method.build(parts[1], parts[2:])
    if method.name == "gguf":
        if len(parts) < 2:
            raise UsageError(f"'{text}' names no GGUF type", f"write it as gguf:q4_k_m (one of {', '.join(FILE_TYPES)})")
        return method.build(parts[1], parts[2:])
    if method.name in ("fp8", "mxfp4", "nvfp4"):
        return method.build(parts[1] if len(parts) > 1 else None, parts[2:])
    if len(parts) < 2 or not parts[1].isdigit():
        raise UsageError(f"'{text}' names no bit width", f"write it as {method.example}")
    return method.build(int(parts[1]), parts[2:])


def parse_variants(items: list[str] | tuple[str, ...]) -> list[Quantizer]:
    """Parse every item (comma-separated lists and presets allowed); duplicates are an error."""
    return parse_items(items, PRESETS, parse_variant, lambda q: q.label, "variant")


__all__ = ["METHODS", "PRESETS", "BnbQuantizer", "CalibratedQuantizer", "FloatFormatQuantizer",
           "HQQQuantizer", "MLXAffineQuantizer", "GGUFQuantizer", "QuantProof", "QuantResult", "Quantizer", "RTNQuantizer",
           "parse_variant", "parse_variants"]
