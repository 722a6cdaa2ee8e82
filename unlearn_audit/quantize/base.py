"""The quantizer interface, the record of what a quantizer did, and the proof that it did it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import QuantizationError


@dataclass(frozen=True)
class QuantProof:
    """Evidence that a variant really is quantized (recorded in the report for every variant).

    Attributes:
        layers_quantized: linear layers whose weights were replaced by quantized values.
        layers_skipped: linear layers left in full precision on purpose (e.g. ``lm_head``).
        groups_checked: quantization groups whose distinct values were counted.
        max_levels: the largest number of distinct values found in one group.
        allowed_levels: 2 ** bits; ``max_levels`` must not exceed it.
        short_groups: groups shorter than the group size (the last group of each row of a layer whose
            width is not a multiple of it), counted among ``groups_checked``.
    """

    layers_quantized: int
    layers_skipped: list[str]
    groups_checked: int
    max_levels: int
    allowed_levels: int
    short_groups: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers_quantized": self.layers_quantized,
            "layers_skipped": list(self.layers_skipped),
            "groups_checked": self.groups_checked,
            "max_levels": self.max_levels,
            "allowed_levels": self.allowed_levels,
            "short_groups": self.short_groups,
        }


@dataclass(frozen=True)
class QuantResult:
    """What applying a quantizer produced: the settings it used and its proof."""

    label: str
    settings: dict[str, Any]
    proof: QuantProof
    notes: list[str] = field(default_factory=list)


class FittedGrid(Protocol):
    """A fixed quantization grid fitted to one weight matrix (RTN groups, bitsandbytes blocks, int8 rows).

    The weight-level diagnostic fits it to the original's weights and places both models' weights on it
    (a common grid), and fits one to the unlearned weights to see how far the grids themselves moved.
    """

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer level of each weight of ``weight`` (same shape) on this grid."""
        ...

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """The values the quantized checkpoint computes with for ``codes`` (levels on this grid, same shape)."""
        ...

    def steps(self) -> torch.Tensor:
        """The quantization step at each weight (shape of the fitted matrix): the distance between two
        adjacent levels (a codebook's mean spacing for 4-bit float formats)."""
        ...

    def params(self) -> torch.Tensor:
        """Per-group parameters [groups, k] (scale, zero point, absmax): equal for two models' own grids
        exactly when the quantizer would use the same grid for both."""
        ...


class Quantizer(Protocol):
    """One quantization method at fixed settings.

    ``apply`` quantizes ``model`` in place (the caller passes a copy) and returns what it did.
    Implementations must raise :class:`~unlearn_audit.errors.InputError` for settings that cannot
    apply to this model (e.g. a group size that does not divide a layer) before changing anything.
    """

    label: str
    bits: int
    fixed_grid: bool
    """True when the grid follows from the weights alone (RTN, bitsandbytes), so the weight-level
    diagnostic can compare grids without data; False for calibrated methods (GPTQ, AWQ)."""
    stage: str
    """``weights``: ``apply`` quantizes a loaded full-precision copy in place. ``load``: transformers
    quantizes while loading with :meth:`load_config`, and ``apply`` inspects and proves the result.
    ``calibrate``: ``quantize(folder, tokenizer, calibration, device)`` builds the model from its folder with
    calibration text and returns it with its proof (GPTQ, AWQ)."""

    def require(self) -> None:
        """Raise InputError (with the install command) if the library this method needs is missing."""
        ...

    def settings(self) -> dict[str, Any]: ...

    def load_config(self) -> Any: ...

    def fit_grid(self, weight: torch.Tensor) -> FittedGrid:
        """The grid this method fits to ``weight`` [out, in] (fixed-grid methods only)."""
        ...

    def apply(self, model: nn.Module) -> QuantResult: ...


def max_distinct(values: torch.Tensor) -> int:
    """Largest number of distinct values along the last dimension, over every leading position."""
    ordered, _ = torch.sort(values.detach(), dim=-1)
    return int(((ordered[..., 1:] != ordered[..., :-1]).sum(dim=-1) + 1).max().item())


def pad_to_groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``weight`` [out, in] widened to a multiple of ``group_size`` columns by repeating each row's last
    value: the last (shorter) group's min, max, absmax and distinct values are unchanged."""
    extra = -weight.shape[-1] % group_size
    if not extra:
        return weight
    return torch.cat([weight, weight[..., -1:].expand(*weight.shape[:-1], extra)], dim=-1)


def count_levels_per_group(weight: torch.Tensor, group_size: int) -> int:
    """Largest number of distinct values in any group of ``group_size`` input columns (the last group
    of a row may be shorter; :func:`pad_to_groups` adds no distinct value)."""
    return max_distinct(pad_to_groups(weight, group_size).reshape(weight.shape[0], -1, group_size))


def verify_proof(label: str, proof: QuantProof) -> QuantProof:
    """Fail loudly if a quantizer silently did nothing or left too many levels."""
    if proof.layers_quantized == 0:
        raise QuantizationError(f"quantizer {label} quantized no linear layer",
                                "check that the model has nn.Linear layers and report this as a bug")
    if proof.max_levels > proof.allowed_levels:
        raise QuantizationError(
            f"quantizer {label} left {proof.max_levels} distinct values in a group, more than "
            f"the {proof.allowed_levels} its bit width allows",
            "report this as a bug; the variant is not a real quantization")
    return proof


@contextmanager
def library_failures(label: str, model: nn.Module | None) -> Iterator[None]:
    """Turn a quantization library's crash while a variant runs (an assertion about a layer shape, an
    unsupported kernel) into one :class:`QuantizationError` naming the variant and the layer that was
    running. Out-of-memory errors pass through (the engine handles them)."""
    current: list[str] = []
    handles = []
    if model is not None:
        for name, module in model.named_modules():
            if not list(module.children()):  # leaf modules: the ones whose kernels fail
                handles.append(module.register_forward_pre_hook(
                    lambda _m, _a, name=name: current.__setitem__(slice(None), [name])))
    try:
        yield
    except (AssertionError, NotImplementedError, RuntimeError, ValueError, TypeError) as exc:
        from ..engines.base import is_out_of_memory

        if is_out_of_memory(exc):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        layer = f" in layer {current[0]}" if current else ""
        raise QuantizationError(f"variant {label} failed{layer}: {detail}",
                                "leave this variant out (--quant) or try another method for this model; "
                                "report the layer shape to the quantization library") from exc
    finally:
        for handle in handles:
            handle.remove()
