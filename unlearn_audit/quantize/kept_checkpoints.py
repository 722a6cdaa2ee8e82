"""The weight-level diagnostic for the variants whose grid exists only once it is made (GPTQ/AWQ, fitted to
calibration data; llama.cpp's k-quants and mixes, searched block by block; published GGUF files): the two quantized
checkpoints an audit kept, one of the unlearned model and one of the original, compared after its probes, with the
same figures and reading as the fixed-grid comparison in :mod:`.diagnostic`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..inputs.checkpoint import load_tensor, tensor_index
from .diagnostic import Totals, compare_dtype, comparable_layers, relative_change


def compare_kept(quantizer: Any, unlearned: Path, original: Path, saved_u: Path, saved_o: Path) -> dict[str, Any]:
    """A variant whose grid is known only once it is made, compared from the two quantized checkpoints the audit
    kept (``saved_u``, ``saved_o``): GGUF files block by block (``kept_as == "gguf"``: llama.cpp's k-quants and
    published files), GPTQ/AWQ checkpoints group by group."""
    if getattr(quantizer, "kept_as", None) == "gguf":
        return gguf_diff(unlearned, original, saved_u, saved_o)
    return calibrated_diff(unlearned, original, saved_u, saved_o, quantizer)


def calibrated_diff(unlearned: Path, original: Path, saved_u: Path, saved_o: Path, quantizer: Any) -> dict[str, Any]:
    """GPTQ/AWQ after the fact: both models were quantized with the same settings (each with its own
    calibrated grid), and their saved checkpoints are compared group by group: the share of moved weights
    whose packed level is the original's, the share of groups whose scale or zero point changed and by how
    much, and the same reading as the fixed-grid methods. The grid depends on the calibration data, so
    the figure describes these two checkpoints, not the method in general."""
    from safetensors import safe_open

    from .calibrated import unpack_codes

    u_index, o_index, _ = comparable_layers(unlearned, original)
    qu_index, qo_index = tensor_index(saved_u), tensor_index(saved_o)
    axis, bits = quantizer.pack_axis, quantizer.bits
    t = Totals()
    for key in sorted(k for k in qu_index if k.endswith(".qweight")):
        if key not in qo_index:
            continue
        stem = key[: -len("qweight")]
        weight = stem + "weight"
        with safe_open(str(qu_index[key]), framework="pt") as hu, safe_open(str(qo_index[key]), framework="pt") as ho:
            codes_u = unpack_codes(hu.get_tensor(key), bits, axis)  # [in, out]
            codes_o = unpack_codes(ho.get_tensor(key), bits, axis)
            scale_u, scale_o = hu.get_tensor(stem + "scales").float(), ho.get_tensor(stem + "scales").float()
            zeros = stem + "qzeros"
            zero_u = unpack_codes(hu.get_tensor(zeros), bits, 1) if zeros in hu.keys() else torch.zeros_like(scale_u)
            zero_o = unpack_codes(ho.get_tensor(zeros), bits, 1) if zeros in ho.keys() else torch.zeros_like(scale_o)
        if weight in u_index and weight in o_index:
            moved = (load_tensor(u_index[weight], weight) != load_tensor(o_index[weight], weight)).T  # [in, out]
        else:
            moved = torch.ones_like(codes_u, dtype=torch.bool)
        moved = moved[: codes_u.shape[0], : codes_u.shape[1]]
        same = codes_u == codes_o
        grid_changed = (scale_u != scale_o) | (zero_u[:, : scale_u.shape[1]] != zero_o[:, : scale_o.shape[1]])
        t.add_levels(moved, same)
        t.add_grids(grid_changed, relative_change(scale_u, scale_o))
        t.add_tensor(bool(same.all()) and not bool(grid_changed.any()))
    if not t.numel:
        raise InputError("the saved checkpoints hold no packed layer", "report this as a bug")
    packed = (".qweight", ".scales", ".qzeros", ".g_idx")
    overall = t.overall(_differing(qu_index, qo_index, lambda name: not name.endswith(packed)))
    for key in ("same_code_common", "same_code_common_of_moved", "update_steps", "code_distance"):
        overall[key] = None  # no common grid: each model's grid comes from its own calibration
    overall["grid"] = "each model's own, fitted to the calibration data by the library"
    return overall


def _differing(u_index: dict[str, Path], o_index: dict[str, Path], chosen: Callable[[str], bool]) -> int:
    """How many of the ``chosen`` tensors of two saved checkpoints differ (or are in one of them only)."""
    names = sorted(n for n in set(u_index) | set(o_index) if chosen(n))
    return sum(1 for n in names if n not in u_index or n not in o_index
               or not torch.equal(load_tensor(u_index[n], n), load_tensor(o_index[n], n)))


def gguf_diff(unlearned: Path, original: Path, saved_u: Path, saved_o: Path) -> dict[str, Any]:
    """GGUF k-quants and mixes after the fact: both models were quantized by llama.cpp to the same file type,
    and the two files are compared block by block, for each linear weight both hold with the same type: the
    share of moved weights whose code is the original's, each file with the grid llama.cpp searched for it;
    the share of sub-blocks whose scale or minimum changed and by how much; the mean update in the
    original's steps (its sub-block scales); and the same reading as the other methods, also per type (the
    mixes give some tensors a finer type). The k-quants search each block's scales, so there is no common
    grid to place the unlearned weights on: those figures are left empty, as for GPTQ/AWQ."""
    import json

    import numpy as np
    from safetensors import safe_open

    from .ggml_blocks import LAYOUT, unpack
    from .gguf import GGUF_NAMES, gguf_library, to_file_rows

    gguf = gguf_library()
    u_index, o_index, names = comparable_layers(unlearned, original)
    wanted = set(names)
    meta = json.loads((saved_o / GGUF_NAMES).read_text())
    files = [gguf.GGUFReader(str(folder / "model.gguf")) for folder in (saved_u, saved_o)]
    tensors_u = {t.name: t for t in files[0].tensors}
    t, by_type = Totals(), {}
    steps_sum, differing, others = 0.0, 0, 0
    compared: set[str] = set()
    for tensor_o in files[1].tensors:
        param = meta["tensors"].get(tensor_o.name)
        tensor_u = tensors_u.get(tensor_o.name)
        kind = tensor_o.tensor_type.name
        if param not in wanted or tensor_u is None or kind not in LAYOUT:
            continue
        if tensor_u.tensor_type.name != kind:
            differing += 1
            continue
        compared.add(tensor_o.name)
        codes_u, codes_o = unpack(tensor_u.data, kind), unpack(tensor_o.data, kind)
        with safe_open(str(u_index[param]), framework="pt") as hu, safe_open(str(o_index[param]), framework="pt") as ho:
            u_raw, o_raw = hu.get_tensor(param), ho.get_tensor(param)
        dtype = compare_dtype(u_raw.dtype, getattr(torch, meta["dtype"]))  # as weight_diff compares
        u, o = u_raw.to(dtype).float().numpy(), o_raw.to(dtype).float().numpy()
        del u_raw, o_raw
        if param.endswith(("q_proj.weight", "k_proj.weight")):  # the file's row order (llama.cpp's RoPE layout)
            heads = meta["heads"] if param.endswith("q_proj.weight") else meta["kv_heads"]
            u, o = to_file_rows(u, heads), to_file_rows(o, heads)
        u, o = u.reshape(codes_o.codes.shape), o.reshape(codes_o.codes.shape)
        moved = torch.from_numpy(u != o)
        same = torch.from_numpy(codes_u.codes == codes_o.codes)
        counts = t.add_levels(moved, same)
        scale_u, scale_o = torch.from_numpy(codes_u.scale), torch.from_numpy(codes_o.scale)
        changed = (scale_u != scale_o) | torch.from_numpy(codes_u.low != codes_o.low)
        t.add_grids(changed, relative_change(scale_u, scale_o))
        t.add_tensor(np.array_equal(tensor_u.data, tensor_o.data))
        step = torch.from_numpy(np.abs(codes_o.per_weight(codes_o.scale)))
        survivor = torch.from_numpy(codes_u.values() - codes_o.values())
        t.add_survivor(torch.from_numpy(u - o), survivor, step, moved, moved & ~same)
        update = np.abs(u - o)[moved.numpy()] / np.where(step.numpy() > 0, step.numpy(), np.inf)[moved.numpy()]
        steps_sum += float(update.sum())
        row = by_type.setdefault(kind, {"tensors": 0, "moved": 0, "same_moved": 0})
        row["tensors"] += 1
        row["moved"] += counts["moved"]
        row["same_moved"] += counts["same_moved"]
    for tensor_o in files[1].tensors:  # the rest of the files (embeddings, norms, output, other types): as stored
        tensor_u = tensors_u.get(tensor_o.name)
        if tensor_o.name not in compared and (tensor_u is None or tensor_u.tensor_type != tensor_o.tensor_type
                                              or not np.array_equal(tensor_u.data, tensor_o.data)):
            others += 1
    others += len(set(tensors_u) - {x.name for x in files[1].tensors})
    if not t.numel:
        raise InputError("the two GGUF files share no quantized linear weight", "report this as a bug")
    overall = t.overall(others)
    for key in ("same_code_common", "same_code_common_of_moved", "code_distance"):
        overall[key] = None  # no common grid: llama.cpp searches each block's scales for each file
    overall["update_steps"] = steps_sum / t.moved if t.moved else None
    overall["grid"] = "each file's own: the scales llama.cpp searched block by block, at the types its mix chose per tensor"
    overall["by_type"] = {kind: {"tensors": row["tensors"],
                                 "same_code_of_moved": row["same_moved"] / row["moved"] if row["moved"] else None}
                          for kind, row in sorted(by_type.items())}
    if differing:
        overall["tensors_of_different_types"] = differing
    return overall
