"""GGUF variants made the way a llama.cpp user's file is made: convert, quantize with llama.cpp, load back.

``gguf:q4_k_m`` (and q8_0, q6_k, q5_k_m, q5_k_s, q5_0, q5_1, q4_k_s, q4_0, q4_1, q3_k_l, q3_k_m, q3_k_s,
q2_k, and the i-quants iq4_xs and iq4_nl, which llama.cpp makes without an importance matrix) converts the loaded model to a GGUF file in its own dtype (the ``gguf`` package, llama.cpp's own
Python library: tensor names from its name map, q/k rows permuted as ``convert_hf_to_gguf.py`` does for
Llama-family models), quantizes that file with llama.cpp's ``llama_model_quantize`` (through
llama-cpp-python), so the per-tensor type choices of the ``_M``/``_S``/``_L`` mixes are llama.cpp's own, and
reads the quantized file back: every tensor dequantized with ``gguf`` (as transformers' GGUF loader does)
and written into the model in place, so the probes see exactly the weights llama.cpp users run. The proof
reads each tensor's type and counts distinct values per scale block from the quantized file itself.

Why this route: the ``gguf`` package alone quantizes only Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and knows none of the
mixes; llama.cpp's quantizer is the reference for every type (the k-quants' scale search included) and is
what produced every GGUF file on the Hub. llama-cpp-python has no Linux wheel on PyPI, so it is built from
its sdist (CMake and a C compiler: ``make gguf``); a prebuilt alternative (llama-cpp-cffi 0.4.42) needs a
newer libstdc++ than Debian 12's and pins transformers < 5.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import GridNotApplicable, InputError, QuantizationError
from ..support.noise import debugging, silenced
from .base import QuantProof, QuantResult, verify_proof

INSTALL = "pip install -c constraints.txt 'unlearn-audit[gguf]' (builds llama.cpp: needs cmake and a C compiler; `make gguf`)"

FILE_TYPES: dict[str, tuple[str, int]] = {
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", 8), "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", 6),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5), "q5_k_s": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", 5),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", 5), "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", 5),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4), "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", 4),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", 4), "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", 4),
    "q3_k_l": ("LLAMA_FTYPE_MOSTLY_Q3_K_L", 3), "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", 3),
    "q3_k_s": ("LLAMA_FTYPE_MOSTLY_Q3_K_S", 3), "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", 2),
    "iq4_xs": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", 4), "iq4_nl": ("LLAMA_FTYPE_MOSTLY_IQ4_NL", 4),
}
"""``gguf:TYPE`` -> (llama.cpp file type, the nominal bits of its main type)."""

TENSOR_BITS = {"Q8_0": 8, "Q6_K": 6, "Q5_K": 5, "Q5_0": 5, "Q5_1": 5, "Q4_K": 4, "Q4_0": 4, "Q4_1": 4,
               "Q3_K": 3, "Q2_K": 2, "IQ4_XS": 4, "IQ4_NL": 4}
"""Bits per weight code of each GGML tensor type (levels per scale block at most 2**bits)."""
SUB_BLOCK = {"Q8_0": 32, "Q5_0": 32, "Q5_1": 32, "Q4_0": 32, "Q4_1": 32, "Q4_K": 32, "Q5_K": 32,
             "Q6_K": 16, "Q3_K": 16, "Q2_K": 16, "IQ4_XS": 32, "IQ4_NL": 32}
"""Weights sharing one scale (and minimum) in each type: the unit whose distinct values the proof counts."""


def _llama_cpp():  # noqa: ANN202
    try:
        import llama_cpp
    except (ImportError, OSError):
        raise InputError("gguf variants need llama.cpp's quantizer (llama-cpp-python)", f"run {INSTALL}") from None
    return llama_cpp


def gguf_library():  # noqa: ANN202
    """The ``gguf`` package (llama.cpp's reader and writer), or one line saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise InputError("gguf variants need the gguf package", f"run {INSTALL}") from None
    return gguf


def to_file_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """``convert_hf_to_gguf.py``'s q/k row order for Llama-family models (llama.cpp's RoPE layout): a q or k
    projection's rows as a GGUF file stores them (``heads``: the query heads for q, the key/value heads for k)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def from_file_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`to_file_rows`."""
    return (weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


GGUF_NAMES = "names.json"
"""Beside a kept GGUF file: its tensor names' parameters and the head counts its q/k rows were permuted with."""


def row_heads(config: Any, parameter: str) -> int | None:
    """The head count a parameter's rows are permuted by in a GGUF file: the query heads for ``q_proj``, the
    key/value heads for ``k_proj`` (the query heads where the config names none), None for any other tensor."""
    heads = config.num_attention_heads
    if parameter.endswith("q_proj.weight"):
        return heads
    if parameter.endswith("k_proj.weight"):
        return getattr(config, "num_key_value_heads", None) or heads
    return None


def gguf_names(model: nn.Module) -> dict[str, str]:
    """GGUF tensor name -> parameter name for a Llama-family model, by llama.cpp's own name map (a tied
    ``lm_head`` is the embedding: written once, as ``token_embd``)."""
    gguf = gguf_library()
    config = model.config
    if getattr(config, "model_type", None) not in ("llama", "mistral", "qwen2"):
        raise QuantizationError(f"gguf variants convert Llama-family models only, not '{config.model_type}'",
                                "leave the gguf variants out for this model")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    mapping: dict[str, str] = {}
    for name, _ in model.named_parameters():  # shared parameters once, under their first name
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise QuantizationError(f"gguf conversion has no GGUF name for tensor {name}",
                                    "leave the gguf variants out for this model")
        mapping[target] = name
    return mapping


def write_gguf(model: nn.Module, path: Path) -> dict[str, str]:
    """Write ``model`` (a Llama-family transformers model) as a GGUF file in float32 (float16 for 16-bit
    models); returns GGUF tensor name -> parameter name."""
    gguf = gguf_library()
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = row_heads(config, "k_proj.weight")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("unlearn-audit variant")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                    or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    half = next(model.parameters()).dtype != torch.float32
    writer.add_file_type(1 if half else 0)  # MOSTLY_F16 / ALL_F32
    mapping = gguf_names(model)
    params = dict(model.named_parameters())

    def array(name: str) -> np.ndarray:
        data = params[name].detach().float().cpu().numpy()
        if heads_of_rows := row_heads(config, name):
            data = to_file_rows(data, heads_of_rows)
        return data.astype(np.float16) if half and data.ndim == 2 else data

    # streamed: the tensors' descriptions first, then one tensor converted and written at a time (the writer's
    # add_tensor would hold a float32 copy of the whole model until the end)
    for target, name in mapping.items():
        shape = tuple(params[name].shape)
        dtype = np.dtype(np.float16 if half and len(shape) == 2 else np.float32)
        writer.add_tensor_info(target, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name in mapping.values():
        writer.write_tensor_data(array(name))
    writer.close()
    return mapping


def keep_file(path: Path, folder: Path, mapping: dict[str, str], model: nn.Module, link: bool = False) -> None:
    """Move (or link, ``link=True``) a quantized GGUF file into ``folder`` as ``model.gguf`` with the names the
    diagnostic needs: GGUF tensor -> parameter, the head counts of the q/k row permutation, the model's dtype."""
    import json
    import shutil

    config = model.config
    folder.mkdir(parents=True, exist_ok=True)
    if link:  # a published file: read where it lies
        (folder / "model.gguf").symlink_to(path.resolve())
    else:
        shutil.move(str(path), folder / "model.gguf")
    (folder / GGUF_NAMES).write_text(json.dumps({
        "tensors": mapping, "heads": row_heads(config, "q_proj.weight"),
        "kv_heads": row_heads(config, "k_proj.weight"),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}))


def quantize_file(source: Path, target: Path, file_type: str, threads: int = 0) -> None:
    """llama.cpp's ``llama_model_quantize`` with its default parameters and ``file_type``."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, file_type)
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not target.is_file():
        raise QuantizationError(f"llama.cpp could not quantize to {file_type} (status {status})",
                                "run with UNLEARN_AUDIT_DEBUG=1 to see llama.cpp's log")


@dataclass(frozen=True)
class GGUFTensors:
    """A quantized GGUF file read back: each tensor's type, and what the proof counted."""

    types: dict[str, str]
    """GGUF tensor name -> GGML type name (Q4_K, Q6_K, F32...)."""
    blocks_checked: int
    max_levels: dict[str, int]
    """Per type: the most distinct values found in one scale block."""


IGNORED_TENSORS = ("rope_freqs.weight",)
"""Tensors llama.cpp's converter adds that have no parameter (precomputed RoPE factors)."""


def read_quantized(path: Path, model: nn.Module, mapping: dict[str, str]) -> GGUFTensors:
    """Dequantize every tensor of ``path`` into ``model``'s parameters (in place) and count levels."""
    gguf = gguf_library()
    from gguf.quants import dequantize

    config = model.config
    reader = gguf.GGUFReader(str(path))
    types: dict[str, str] = {}
    max_levels: dict[str, int] = {}
    blocks = 0
    params = dict(model.named_parameters())
    with torch.no_grad():
        for tensor in reader.tensors:
            if tensor.name in IGNORED_TENSORS:
                continue
            kind = tensor.tensor_type.name
            name = mapping.get(tensor.name)
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            while len(shape) > 1 and shape[0] == 1:
                shape = shape[1:]
            if name is None or tuple(params[name].shape) != shape:
                have = "no such tensor" if name is None else f"shape {tuple(params[name].shape)}"
                raise QuantizationError(f"{path.name} holds {tensor.name} {shape}, and the model has {have}",
                                        "the GGUF file is not a quantization of this model: leave it out")
            types[tensor.name] = kind
            values = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
            if kind in SUB_BLOCK:
                sub = values.reshape(-1, SUB_BLOCK[kind])
                ordered = np.sort(sub, axis=1)
                distinct = int(((ordered[:, 1:] != ordered[:, :-1]).sum(axis=1) + 1).max())
                max_levels[kind] = max(max_levels.get(kind, 0), distinct)
                blocks += sub.shape[0]
            if heads_of_rows := row_heads(config, name):
                values = from_file_rows(values, heads_of_rows)
            param = params[name]
            param.copy_(torch.from_numpy(np.array(values, copy=True)).to(dtype=param.dtype, device=param.device))
    return GGUFTensors(types=types, blocks_checked=blocks, max_levels=max_levels)


LEGACY = {"q8_0": ("Q8_0", 8), "q4_0": ("Q4_0", 4), "q4_1": ("Q4_1", 4), "q5_0": ("Q5_0", 5), "q5_1": ("Q5_1", 5)}
"""File types whose every block tensor has one fixed grid per block of 32, fitted from the block's own values
(llama.cpp keeps the type for all of them): the weight diagnostic can fit and compare these."""


@dataclass(frozen=True)
class BlockGrid:
    """A ggml legacy grid over blocks of 32 weights of one row, as ggml's reference quantizer fits it.

    Q8_0: ``d = max|x|/127``, code ``roundf(x/d)`` in -127..127; Q4_0/Q5_0: ``d = m/-8`` (``m/-16``) with
    ``m`` the block's value of largest magnitude, code ``trunc(x/d + 8.5)`` (``16.5``) in 0..15 (0..31),
    value ``(code - 8) * d``; Q4_1/Q5_1: ``d = (max-min)/15`` (``/31``), code ``trunc((x-min)/d + 0.5)``,
    value ``code * d + min``. Codes use the float32 ``1/d``, values the float16-stored ``d`` and ``min``, as
    ggml does (bit for bit; tests/test_gguf.py checks it against the gguf package's reference port)."""

    kind: str
    inverse: torch.Tensor
    """1/d per block in float32 (0 for an all-zero block), [out, blocks, 1]."""
    scale: torch.Tensor
    """d as stored (float16, widened), [out, blocks, 1]."""
    low: torch.Tensor
    """min as stored (Q4_1/Q5_1; zeros otherwise), [out, blocks, 1]."""
    low_exact: torch.Tensor
    """min in float32, which the codes are computed from."""
    in_features: int

    def _blocks(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().float().reshape(weight.shape[0], -1, 32)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        x = self._blocks(weight)
        if self.kind == "Q8_0":
            a = (x * self.inverse).abs()
            q = torch.sign(x * self.inverse) * (torch.floor(a) + torch.floor(2 * (a - torch.floor(a))))
            return q.clamp(-127, 127).reshape(weight.shape)
        levels = 15 if self.kind in ("Q4_0", "Q4_1") else 31
        if self.kind in ("Q4_0", "Q5_0"):
            q = torch.trunc(x * self.inverse + (levels + 1) / 2 + 0.5)
        else:
            q = torch.trunc((x - self.low_exact) * self.inverse + 0.5)
        return q.clamp(0, levels).reshape(weight.shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        q = self._blocks(codes)
        if self.kind == "Q8_0":
            return (q * self.scale).reshape(codes.shape)
        if self.kind in ("Q4_0", "Q5_0"):
            return ((q - (16 if self.kind == "Q5_0" else 8)) * self.scale).reshape(codes.shape)
        return (q * self.scale + self.low).reshape(codes.shape)

    def steps(self) -> torch.Tensor:
        return self.scale.abs().expand(-1, -1, 32).reshape(self.scale.shape[0], -1)

    def params(self) -> torch.Tensor:
        return torch.cat([self.scale, self.low], dim=-1).reshape(-1, 2)


def block_grid(weight: torch.Tensor, kind: str) -> BlockGrid:
    """The ggml grid of type ``kind`` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) that ``weight`` [out, in] defines."""
    if weight.shape[1] % 32:
        raise GridNotApplicable(f"{kind} needs rows of a multiple of 32 weights, not {weight.shape[1]} (llama.cpp "
                                "keeps such a matrix in F16)", "nothing to do: the matrix is not quantized")
    x = weight.detach().float().reshape(weight.shape[0], -1, 32)
    low = torch.zeros_like(x[..., :1])
    if kind == "Q8_0":
        d = x.abs().amax(dim=-1, keepdim=True) / 127
    elif kind in ("Q4_0", "Q5_0"):
        peak = torch.gather(x, -1, x.abs().argmax(dim=-1, keepdim=True))
        d = peak / (-8 if kind == "Q4_0" else -16)
    else:
        low = x.amin(dim=-1, keepdim=True)
        d = (x.amax(dim=-1, keepdim=True) - low) / (15 if kind == "Q4_1" else 31)
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))
    return BlockGrid(kind=kind, inverse=inverse, scale=d.half().float(), low=low.half().float(), low_exact=low,
                     in_features=weight.shape[1])


@dataclass(frozen=True)
class GGUFQuantizer:
    """One llama.cpp file type (``gguf:q4_k_m``...), applied in place through a real GGUF file."""

    kind: str = "q4_k_m"
    stage = "weights"
    """Quantized in place on the loaded copy (through the file), restored from the checkpoint afterwards."""
    writes_scratch = True
    """Its GGUF files go to the audit's scratch folder (the full-precision one is 4 bytes per parameter)."""

    def __post_init__(self) -> None:
        if self.kind not in FILE_TYPES:
            raise InputError(f"unknown GGUF type '{self.kind}'", f"use one of {', '.join(FILE_TYPES)}")

    @property
    def label(self) -> str:
        return f"gguf:{self.kind}"

    @property
    def fixed_grid(self) -> bool:
        """The legacy types (q8_0, q4_0, q4_1, q5_0, q5_1) fit one grid per block from its values: the
        diagnostic compares them. The k-quants search their scales and the mixes choose types per tensor."""
        return self.kind in LEGACY

    kept_as = "gguf"
    """How the diagnostic reads the two kept checkpoints (see ``kept_checkpoints.compare_kept``)."""

    @property
    def compared_after(self) -> bool:
        """The k-quants and mixes: the audit keeps both models' quantized files and the diagnostic compares
        their blocks afterwards (``kept_checkpoints.gguf_diff``), as for GPTQ/AWQ."""
        return self.kind not in LEGACY

    @property
    def not_compared_reason(self) -> str:
        return ("llama.cpp's k-quants search each block's scales and the _S/_M/_L mixes choose a type per tensor, so "
                "they are compared from the two files an audit quantizes (after its probes; `diff` alone cannot)")

    @property
    def bits(self) -> int:
        return FILE_TYPES[self.kind][1]

    def require(self) -> None:
        gguf_library()
        _llama_cpp()

    def settings(self) -> dict[str, Any]:
        llama_cpp = _llama_cpp()
        return {"method": "gguf", "file_type": self.kind.upper(), "bits": self.bits,
                "library": "llama.cpp (llama-cpp-python)", "library_version": getattr(llama_cpp, "__version__", "?"),
                "gguf_version": _gguf_version(), "imatrix": None, "include_lm_head": True,
                "route": "converted to GGUF in the model's dtype, quantized by llama_model_quantize (default "
                         "parameters), dequantized back with the gguf package"}

    def load_config(self) -> Any:
        return None

    def fit_grid(self, weight: torch.Tensor) -> BlockGrid:
        """The ggml grid llama.cpp uses for this file type's block tensors (legacy types only)."""
        if self.kind not in LEGACY:
            raise QuantizationError(f"{self.label} has no fixed grid to fit", self.not_compared_reason)
        return block_grid(weight, LEGACY[self.kind][0])

    def apply(self, model: nn.Module, workdir: Path | None = None, save_to: Path | None = None) -> QuantResult:
        """Quantize ``model`` in place through a GGUF file written in ``workdir`` (default: the system's
        temporary folder); ``save_to`` keeps the quantized file (with its names) for the diagnostic."""
        self.require()
        with tempfile.TemporaryDirectory(prefix="unlearn-audit-gguf-", dir=workdir) as scratch:
            source, target = Path(scratch) / "model.gguf", Path(scratch) / f"model-{self.kind}.gguf"
            mapping = write_gguf(model, source)
            with silenced(fds=(2,), python_stderr=True, active=not debugging()):
                quantize_file(source, target, FILE_TYPES[self.kind][0])
            source.unlink()  # the full-precision file: not needed any more
            read = read_quantized(target, model, mapping)
            if save_to is not None:
                keep_file(target, save_to, mapping, model)
        quantized = {n: t for n, t in read.types.items() if t in TENSOR_BITS}
        linear = {n: t for n, t in quantized.items() if not mapping[n].endswith("embed_tokens.weight")}
        head_tied = "output.weight" not in read.types and "token_embd.weight" in quantized
        for kind, levels in read.max_levels.items():
            if levels > 2 ** TENSOR_BITS[kind]:
                raise QuantizationError(f"{self.label}: a {kind} block holds {levels} distinct values",
                                        "report this as a bug; the file is not what llama.cpp writes")
        widest = max((TENSOR_BITS[t] for t in quantized.values()), default=self.bits)  # a tied head: the embedding's type
        proof = QuantProof(layers_quantized=len(linear) + head_tied,
                           layers_skipped=sorted(mapping[n] for n in read.types
                                                 if n not in quantized and not n.endswith("norm.weight")),
                           groups_checked=read.blocks_checked, max_levels=max(read.max_levels.values(), default=0),
                           allowed_levels=2 ** widest)
        counts: dict[str, int] = {}
        for kind in read.types.values():
            counts[kind] = counts.get(kind, 0) + 1
        settings = {**self.settings(), "tensor_types": dict(sorted(counts.items())),
                    "tensor_bits_max": widest, "max_levels_per_type": dict(sorted(read.max_levels.items())),
                    "include_lm_head": "output.weight" in quantized or head_tied,
                    "types_by_tensor": {mapping[n]: t for n, t in sorted(read.types.items())
                                        if not n.endswith("norm.weight")}}
        return QuantResult(label=self.label, settings=settings, proof=verify_proof(self.label, proof))


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "?"
