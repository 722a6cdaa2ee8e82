"""The codes and scales inside ggml's quantized blocks, read from the bytes llama.cpp writes.

A GGUF tensor of a quantized type is a sequence of blocks (32 weights for the legacy types, 256 for the
k-quants); each block stores one integer code per weight and, per sub-block (the weights sharing a scale:
32 for Q4_0...Q8_0, Q4_K/Q5_K and the IQ4 types, 16 for Q2_K/Q3_K/Q6_K), an effective scale and minimum. This module unpacks
them (layouts of ggml-common.h) into ``value = scale * code - low`` per weight, so the weight diagnostic can
compare two files' codes and grids, as it compares GPTQ/AWQ checkpoints. ``BlockCodes.values`` rebuilds the
dequantized weights in ggml's float32 order of operations; tests/test_gguf.py checks them bit for bit against
the ``gguf`` package's dequantizer for every type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUT: dict[str, tuple[int, int, int]] = {
    "Q4_0": (32, 18, 32), "Q4_1": (32, 20, 32), "Q5_0": (32, 22, 32), "Q5_1": (32, 24, 32), "Q8_0": (32, 34, 32),
    "Q2_K": (256, 84, 16), "Q3_K": (256, 110, 16), "Q4_K": (256, 144, 32), "Q5_K": (256, 176, 32),
    "Q6_K": (256, 210, 16), "IQ4_NL": (32, 18, 32), "IQ4_XS": (256, 136, 32),
}
"""GGML type -> (weights per block, bytes per block, weights per sub-block sharing one scale)."""
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)
"""IQ4_NL's and IQ4_XS's 16 levels (ggml-common.h ``kvalues_iq4nl``), in code order."""


@dataclass(frozen=True)
class BlockCodes:
    """One tensor's blocks unpacked: ``codes`` [blocks, weights] (signed where the type centres them),
    ``scale`` and ``low`` [blocks, sub-blocks] in float32, with ``value = scale * code - low``."""

    kind: str
    codes: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    table: np.ndarray | None = None
    """The i-quants' non-linear code book: ``value = scale * table[code]`` (codes are ordinal indices into it)."""

    @property
    def sub(self) -> int:
        return LAYOUT[self.kind][2]

    def per_weight(self, values: np.ndarray) -> np.ndarray:
        """A per-sub-block array [blocks, subs] spread to every weight [blocks, weights]."""
        return np.repeat(values, self.sub, axis=1)

    def values(self) -> np.ndarray:
        """The dequantized weights [blocks, weights], as ggml computes them."""
        scale, low = self.per_weight(self.scale), self.per_weight(self.low)
        levels = self.codes.astype(np.float32) if self.table is None else self.table[self.codes]
        return scale * levels - low


def _half(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, group: int) -> np.ndarray:
    """Bytes holding two 4-bit codes each, ``group`` bytes per run: a run's low nibbles, then its high ones."""
    n = qs.shape[0]
    runs = qs.reshape(n, -1, 1, group) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (runs & 0x0F).reshape(n, -1)


def _crumbs(qs: np.ndarray, group: int = 32) -> np.ndarray:
    """Bytes holding four 2-bit codes each, ``group`` bytes per run (bits 0-1 of the run, then 2-3...)."""
    n = qs.shape[0]
    runs = qs.reshape(n, -1, 1, group) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return (runs & 0x03).reshape(n, -1)


def _bits(mask: np.ndarray, count: int) -> np.ndarray:
    """Bit ``j`` of byte ``b`` of each row, ordered j-major: weight ``j * len + b``."""
    n = mask.shape[0]
    return ((mask.reshape(n, 1, -1) >> np.arange(count, dtype=np.uint8).reshape(1, count, 1)) & 1).reshape(n, -1)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's eight 6-bit scales and minimums from their 12 bytes: bytes 0-3 and 4-7 hold the first four
    scales and minimums in their low 6 bits and the top 2 bits of the last four; bytes 8-11 their low nibbles."""
    a, m, low = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([a & 0x3F, (low & 0x0F) | ((a >> 2) & 0x30)], axis=1)
    mins = np.concatenate([m & 0x3F, (low >> 4) | ((m >> 2) & 0x30)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def unpack(raw: np.ndarray, kind: str) -> BlockCodes:
    """Unpack a tensor's bytes (any shape whose size is a whole number of ``kind`` blocks)."""
    if kind not in LAYOUT:
        raise ValueError(f"no block layout for {kind}")
    _, size, _ = LAYOUT[kind]
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, size)
    n = b.shape[0]
    zeros16 = np.zeros((n, 16), dtype=np.float32)
    if kind == "Q8_0":
        d = _half(b[:, :2])
        return BlockCodes(kind, b[:, 2:].view(np.int8).astype(np.int16), d, np.zeros_like(d))
    if kind in ("Q4_0", "Q4_1"):
        d = _half(b[:, :2])
        offset = 2 if kind == "Q4_0" else 4
        q = _nibbles(b[:, offset:], 16).astype(np.int16)
        if kind == "Q4_0":
            return BlockCodes(kind, q - 8, d, np.zeros_like(d))
        return BlockCodes(kind, q, d, -_half(b[:, 2:4]))
    if kind in ("Q5_0", "Q5_1"):
        d = _half(b[:, :2])
        offset = 2 if kind == "Q5_0" else 4
        high = np.ascontiguousarray(b[:, offset:offset + 4]).view("<u4")
        high = ((high >> np.arange(32, dtype=np.uint32).reshape(1, 32)) & 1).astype(np.int16)
        q = _nibbles(b[:, offset + 4:], 16).astype(np.int16) | (high << 4)
        if kind == "Q5_0":
            return BlockCodes(kind, q - 16, d, np.zeros_like(d))
        return BlockCodes(kind, q, d, -_half(b[:, 2:4]))
    if kind == "Q2_K":  # scales[16] (scale | min << 4), qs[64], d, dmin
        packed, qs = b[:, :16], b[:, 16:80]
        d, dmin = _half(b[:, 80:82]), _half(b[:, 82:84])
        return BlockCodes(kind, _crumbs(qs).astype(np.int16), d * (packed & 0x0F).astype(np.float32),
                          dmin * (packed >> 4).astype(np.float32))
    if kind == "Q3_K":  # hmask[32], qs[64], scales[12] (16 x 6 bits, offset 32), d
        hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _half(b[:, 108:110])
        low4 = np.concatenate([packed[:, :8] & 0x0F, packed[:, :8] >> 4], axis=1)
        top2 = ((packed[:, 8:12].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)) & 3)
        scales = (low4 | (top2.reshape(n, 16) << 4)).astype(np.int8) - np.int8(32)
        q = _crumbs(qs).astype(np.int16) - 4 * (1 - _bits(hmask, 8).astype(np.int16))
        return BlockCodes(kind, q, d * scales.astype(np.float32), zeros16)
    if kind in ("Q4_K", "Q5_K"):  # d, dmin, scales[12], (qh[32]), qs[128]
        d, dmin = _half(b[:, :2]), _half(b[:, 2:4])
        scales, mins = _k_scales(b[:, 4:16])
        if kind == "Q4_K":
            q = _nibbles(b[:, 16:], 32).astype(np.int16)
        else:
            q = _nibbles(b[:, 48:], 32).astype(np.int16) | (_bits(b[:, 16:48], 8).astype(np.int16) << 4)
        return BlockCodes(kind, q, d * scales, dmin * mins)
    if kind in ("IQ4_NL", "IQ4_XS"):  # d, qs[16] / d, scales_h (u16), scales_l[4], qs[128]
        d = _half(b[:, :2])
        if kind == "IQ4_NL":
            return BlockCodes(kind, _nibbles(b[:, 2:], 16).astype(np.int16), d, np.zeros_like(d), IQ4_VALUES)
        high = (np.ascontiguousarray(b[:, 2:4]).view("<u2") >> (2 * np.arange(8, dtype=np.uint16))) & 3
        low4 = _nibbles(b[:, 4:8], 1)  # scale i: byte i // 2, low nibble for even i
        scales = (low4 | (high.astype(np.uint8) << 4)).astype(np.int8) - np.int8(32)
        q = _nibbles(b[:, 8:], 16).astype(np.int16)
        return BlockCodes(kind, q, d * scales.astype(np.float32), np.zeros((n, 8), dtype=np.float32), IQ4_VALUES)
    # Q6_K: ql[128], qh[64], scales[16] (int8), d
    ql, qh, packed, d = b[:, :128], b[:, 128:192], b[:, 192:208], _half(b[:, 208:210])
    low = _nibbles(ql, 64).astype(np.int16)
    high = _crumbs(qh).astype(np.int16)
    scale = d * np.ascontiguousarray(packed).view(np.int8).astype(np.float32)
    return BlockCodes(kind, (low | (high << 4)) - 32, scale, zeros16)


def quantize_rows(values: np.ndarray, kind: str) -> np.ndarray:
    """Quantize float32 ``values`` [rows, n] with ggml's own ``ggml_quantize_chunk`` (llama.cpp's library, as
    ``llama_model_quantize`` calls it, without an importance matrix): the bytes [rows, row bytes]."""
    import ctypes
    from pathlib import Path

    import llama_cpp
    from gguf import GGMLQuantizationType

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    src = np.ascontiguousarray(values, dtype=np.float32)
    rows, n = src.shape
    per, size, _ = LAYOUT[kind]
    dst = np.zeros((rows, n // per * size), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(GGMLQuantizationType[kind]), src.ctypes.data, dst.ctypes.data, 0, rows, n,
                                      None)
    if written != dst.size:
        raise RuntimeError(f"ggml wrote {written} bytes of {kind}, expected {dst.size}")
    return dst
