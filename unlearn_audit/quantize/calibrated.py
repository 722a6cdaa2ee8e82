"""GPTQ and AWQ: calibrated 4-bit (2-8) quantization through GPT-QModel, the maintained library that
runs both (auto-gptq is dead with transformers 5, autoawq is deprecated).

GPT-QModel loads the model from its folder, runs calibration layer by layer and packs the weights into
its quantized linear layers; the audit probes that model with the library's own kernels (torch kernels
on CPU), as a user who quantized it themselves would. Calibration text: see :mod:`unlearn_audit.inputs.calibration`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, QuantizationError
from ..inputs.calibration import CalibrationSet
from ..support.noise import quiet_library_import
from .base import QuantProof, QuantResult, max_distinct, verify_proof

INSTALL = "pip install -c constraints.txt 'unlearn-audit[gptq]' (GPT-QModel)"
METHOD_NAMES = ("gptq", "awq")


def _cpu_workers() -> None:
    """GPT-QModel's CPU pool defaults to half the cores, but its model loader asks for two workers:
    on a 2-core machine that fails (``requests 2 workers but parent 'cpu' only has 1``)."""
    if "GPTQMODEL_CPU_WORKERS" not in os.environ:
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, ((os.cpu_count() or 1) + 1) // 2))


def _gptqmodel():  # noqa: ANN202
    _cpu_workers()
    try:
        with quiet_library_import():  # a banner, torchao's warnings, the root logger and HF_* variables changed
            import gptqmodel
    except ImportError:
        raise InputError("the gptq and awq quantizers need GPT-QModel", f"run {INSTALL}") from None
    return gptqmodel


def _log_dir(folder: Path) -> None:
    """GPT-QModel 7.6 writes a log file per quantization pass under ``./logs`` of the working directory;
    send them to our scratch folder (removed afterwards) instead of the user's directory."""
    from gptqmodel.looper import loop_processor

    if hasattr(loop_processor, "_PROJECT_LOG_DIR"):
        folder.mkdir(parents=True, exist_ok=True)
        loop_processor._PROJECT_LOG_DIR = folder


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """GPT-QModel logs tables and progress bars on stdout, where our machine-readable output goes, and
    saving shows progress bars and deprecation warnings on stderr; our own progress display says what runs.
    Errors still propagate as exceptions."""
    from logbar import LogBar

    bar = LogBar.shared()
    level = getattr(bar, "level", None)
    bar.setLevel("ERROR")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if level is not None:
            bar.setLevel(level)


def unpack_codes(packed: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """Unpack int32 words holding ``bits``-bit codes as one little-endian bit stream along ``axis``
    (GPTQ packs along the input axis, AWQ along the output axis; 3-bit codes straddle words)."""
    import numpy as np

    words = packed.detach().cpu().numpy().astype(np.uint32)
    words = np.ascontiguousarray(np.moveaxis(words, axis, -1))
    stream = np.unpackbits(words.view(np.uint8).reshape(*words.shape[:-1], -1), axis=-1, bitorder="little")
    count = stream.shape[-1] // bits
    stream = stream[..., : count * bits].reshape(*stream.shape[:-1], count, bits)
    codes = (stream.astype(np.int64) << np.arange(bits)).sum(-1)
    return torch.from_numpy(np.moveaxis(codes, -1, axis))


def checkpoint_levels(folder: Path, bits: int, group_size: int, pack_axis: int) -> tuple[int, int, int]:
    """From a saved GPTQ/AWQ checkpoint: (quantized layers, groups checked, most distinct codes in any
    group of one output column). Codes are counted, not dequantized values: within a group the scale and
    zero point are shared, so distinct codes are distinct values."""
    from safetensors import safe_open

    layers, groups, worst = 0, 0, 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            keys = set(handle.keys())
            for key in sorted(k for k in keys if k.endswith(".qweight")):
                codes = unpack_codes(handle.get_tensor(key), bits, pack_axis)  # [in, out]
                g_key = key[: -len("qweight")] + "g_idx"
                in_features = codes.shape[0]
                g_idx = (handle.get_tensor(g_key).long() if g_key in keys
                         else torch.arange(in_features) // group_size)
                order = torch.argsort(g_idx, stable=True)
                sizes = [n for n in torch.bincount(g_idx).tolist() if n]
                for block in torch.split(codes[order], sizes, dim=0):  # [group members, out]
                    worst = max(worst, max_distinct(block.T))
                    groups += block.shape[1]
                layers += 1
    return layers, groups, worst


def _largest_dividing_group(shapes: dict[str, tuple[int, ...]]) -> int:
    """The largest power-of-two group size (at most 128) that divides every layer's input width."""
    group = 128
    while group > 1 and any(in_features % group for _, in_features in shapes.values()):
        group //= 2
    return group


@dataclass(frozen=True)
class CalibratedQuantizer:
    """GPTQ or AWQ at ``bits`` with groups of ``group_size`` input columns.

    Defaults follow what published checkpoints use: GPTQ symmetric without act-order (GPT-QModel's
    default), AWQ with a zero point (AutoAWQ's ``zero_point=True``, GEMM layout)."""

    method: str = "gptq"
    bits: int = 4
    group_size: int = 128
    symmetric: bool | None = None
    act_order: bool = False
    damp_percent: float = 0.05
    fixed_grid = False
    stage = "calibrate"
    """``quantize`` builds the model from its folder with calibration text; ``apply`` proves the result."""

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise InputError(f"unknown calibrated method '{self.method}'", "use gptq or awq")
        allowed = (2, 3, 4, 8) if self.method == "gptq" else (4,)
        if self.bits not in allowed:
            raise InputError(f"{self.method.upper()} does not support {self.bits} bits",
                             f"use {' or '.join(map(str, allowed))} bits, e.g. {self.method}:4")
        if self.group_size < 1:
            raise InputError(f"group size {self.group_size} is not positive", f"use e.g. {self.method}:4:g128")
        if self.act_order and self.method == "awq":
            raise InputError("AWQ has no act-order", "drop :act, or use gptq:4:act")

    @property
    def sym(self) -> bool:
        return self.symmetric if self.symmetric is not None else self.method == "gptq"

    @property
    def label(self) -> str:
        parts = [f"{self.method}:{self.bits}", f"g{self.group_size}"]
        if self.sym != (self.method == "gptq"):
            parts.append("sym" if self.sym else "asym")
        if self.act_order:
            parts.append("act")
        return ":".join(parts)

    def require(self) -> None:
        _gptqmodel()

    def check_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse, before any probe runs, a model whose linear layers GPT-QModel's kernels cannot take: they
        need every input width to be a multiple of the group size (its CPU int4 kernel asserts
        ``K % qGroupSize == 0``; no shorter last group as RTN has)."""
        for name, (_, in_features) in shapes.items():
            if in_features % self.group_size:
                raise QuantizationError(
                    f"variant {self.label} cannot quantize layer {name.removesuffix('.weight')}: its {in_features} "
                    f"inputs are not a multiple of the group size {self.group_size} (GPT-QModel's kernels need that)",
                    f"leave {self.label} out, or choose a group size that divides every layer "
                    f"(e.g. {self.method}:{self.bits}:g{_largest_dividing_group(shapes)})")

    def load_config(self) -> Any:
        """The GPT-QModel quantization config for these settings."""
        gptqmodel = _gptqmodel()
        from gptqmodel.quantization.config import FORMAT, METHOD

        common = {"bits": self.bits, "group_size": self.group_size, "sym": self.sym, "desc_act": self.act_order}
        if self.method == "gptq":
            return gptqmodel.QuantizeConfig(**common, damp_percent=self.damp_percent)
        return gptqmodel.QuantizeConfig(**common, quant_method=METHOD.AWQ, format=FORMAT.GEMM)

    def settings(self) -> dict[str, Any]:
        base = {"method": self.method, "library": "gptqmodel", "library_version": _gptqmodel().__version__,
                "bits": self.bits, "group_size": self.group_size,
                "scheme": "symmetric" if self.sym else "asymmetric (zero point)",
                "layers": "every nn.Linear except lm_head"}
        if self.method == "gptq":
            return {**base, "act_order": self.act_order, "damp_percent": self.damp_percent, "format": "gptq",
                    "fallback": "RTN for a layer whose calibration covers under 0.5% of its inputs (library default)"}
        return {**base, "format": "gemm"}

    def _backend(self, device: str) -> Any:
        from gptqmodel import BACKEND

        if not device.startswith("cpu"):
            return BACKEND.AUTO
        return BACKEND.GPTQ_TORCH if self.method == "gptq" else BACKEND.AWQ_TORCH

    def compute_dtype(self, device: str, run_dtype: str | None = None) -> torch.dtype:
        """The quantized kernels take 16-bit activations (GPT-QModel's torch kernels refuse float32):
        bfloat16 on CPU as GPT-QModel picks there; on an accelerator the audit's run dtype when it is 16-bit
        (bfloat16 by default, so the variant differs from the full-precision baseline only by quantization;
        GPT-QModel's AUTO backend picks a kernel that takes it), else float16. Recorded as activation_dtype."""
        if device.startswith("cpu"):
            return torch.bfloat16
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(run_dtype or "", torch.float16)

    def quantize(self, folder: Path, tokenizer: Any, calibration: CalibrationSet, device: str = "cpu",
                 trust_remote_code: bool = False, save_to: Path | None = None, run_dtype: str | None = None,
                 workdir: Path | None = None) -> tuple[nn.Module, QuantResult]:
        """Quantize the model in ``folder`` with GPT-QModel, calibrating on ``calibration``, save the
        checkpoint and load it back with transformers, exactly as a user runs a GPTQ/AWQ checkpoint.
        Returns the model and the proof (codes counted in the saved checkpoint, layers in the model).
        The checkpoint goes to a scratch folder (in ``workdir``, default the system's temporary folder; GPT-QModel
        offloads the model being quantized there too), removed afterwards, unless ``save_to`` names a folder to keep it.

        The reload is not a formality: in GPT-QModel 7.6 the model object left in memory by
        ``quantize()`` dequantizes GPTQ weights one step off the grid it computed (measured on the
        miniature: every generation degenerates), while the saved checkpoint is right."""
        gptqmodel = _gptqmodel()
        limit = min(calibration.max_tokens, getattr(tokenizer, "model_max_length", 10**9) or 10**9)
        samples = []
        for text in calibration.texts:
            ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
            if len(ids) >= 2:
                samples.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        if not samples:
            raise InputError(f"calibration text ({calibration.source}) tokenizes to nothing",
                             "use longer calibration text")
        from transformers import AutoModelForCausalLM

        dtype = self.compute_dtype(device, run_dtype)
        with tempfile.TemporaryDirectory(prefix="unlearn-audit-gptq-", dir=workdir) as scratch, _quiet():
            _log_dir(Path(scratch) / "logs")
            config = self.load_config()
            config.offload_to_disk_path = str(Path(scratch) / "offload")  # removed with the scratch folder
            saved = Path(save_to) if save_to is not None else Path(scratch) / "quantized"
            try:
                wrapped = gptqmodel.GPTQModel.load(str(folder), config, device=device, dtype=dtype,
                                                   trust_remote_code=trust_remote_code)
                wrapped.quantize(samples, batch_size=1, backend=self._backend(device), calibration_data_min_length=2)
                wrapped.save(str(saved))
                del wrapped
                model = AutoModelForCausalLM.from_pretrained(saved, dtype=dtype, device_map={"": device},
                                                             trust_remote_code=trust_remote_code)
                packed = checkpoint_levels(saved, self.bits, self.group_size, self.pack_axis)
            except (RuntimeError, ValueError, OSError) as exc:
                raise QuantizationError(f"{self.method.upper()} quantization failed: {str(exc).splitlines()[0]}",
                                        "check the settings against the model's layer sizes, or report this") from None
        model.eval()
        result = self._prove(model, *packed)
        result.settings["calibration"] = calibration.describe()
        return model, result

    def checkpoint_layers(self, folder: Path) -> int:
        """Quantized layers in a saved checkpoint of this method."""
        return checkpoint_levels(folder, self.bits, self.group_size, self.pack_axis)[0]

    @property
    def pack_axis(self) -> int:
        return 0 if self.method == "gptq" else 1  # GPTQ packs input rows, AWQ output columns

    def apply(self, model: nn.Module) -> QuantResult:
        raise QuantizationError(f"{self.label} quantizes from the model's folder with calibration, not in place",
                                "call quantize(folder, tokenizer, calibration) instead (a bug if you see this)")

    def _prove(self, model: nn.Module, packed_layers: int, groups: int, max_levels: int) -> QuantResult:
        """The loaded model must hold one quantized layer per packed layer of the checkpoint."""
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        kernels, skipped, loaded = set(), [], 0
        for name, module in model.named_modules():
            if isinstance(module, BaseQuantLinear):
                kernels.add(type(module).__name__)
                loaded += 1
            elif type(module) is nn.Linear:
                skipped.append(name)
        if loaded != packed_layers:
            raise QuantizationError(f"{self.label}: the checkpoint has {packed_layers} quantized layers but the "
                                    f"loaded model {loaded}", "report this as a bug; the variant is not what was saved")
        proof = QuantProof(layers_quantized=loaded, layers_skipped=skipped, groups_checked=groups,
                           max_levels=max_levels, allowed_levels=2**self.bits)
        settings = {**self.settings(), "kernel": ", ".join(sorted(kernels)),
                    "activation_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                    "loaded": "the saved checkpoint, through transformers (as users load it)"}
        return QuantResult(label=self.label, settings=settings, proof=verify_proof(self.label, proof))
