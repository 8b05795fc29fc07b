"""JLCM block formats: the numpy reference for packing, unpacking and dequantizing.

A block holds 64 consecutive weights of one row and decodes on its own:

    JLCM2 (20 bytes, 2.5 bpw)          JLCM3 (30 bytes, 3.75 bpw)
    ggml_half d                        ggml_half d
    uint8_t   cb[2]   4 x int4         uint8_t   cb[4]   8 x int4
    uint8_t   qs[16]  64 x 2-bit       uint8_t   qs[16]  32 x (3-bit index, 1 high bit)
                                       uint8_t   qh[8]   32 x low 2 bits

    w[i] = d * (nibble(cb, idx[i]) - 8)

Codebook entry k is nibble k of cb (low nibble first), offset by 8, so entries
span [-8, 7]: one pshufb/tbl lookup turns indices into int8 weights. JLCM2's
index i lives in qs[i % 16] at bits 2*(i // 16). JLCM3's indices 0..31 are the
nibbles of qs (nibble i: qs[i % 16] >> 4*(i // 16)), in bits 0-2; bit 3 of nibble
j is the high bit of index 32 + j, whose low 2 bits are field j // 8 of qh[j % 8].
docs/FORMAT.md has the arithmetic, the alternatives, and why JLCM3's bits lie so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 64


@dataclass(frozen=True)
class JLCMType:
    name: str
    type_id: int      # ggml type id; high, so no upstream or fork type collides
    bits: int

    @property
    def block_size(self) -> int:
        return QK

    @property
    def n_codes(self) -> int:
        return 1 << self.bits

    @property
    def type_size(self) -> int:
        return 2 + self.n_codes // 2 + QK * self.bits // 8

    @property
    def bpw(self) -> float:
        return 8 * self.type_size / QK


# The files' jlcm.format_version. 2: JLCM3's indices moved to their present bits (the nibbles of
# qs and 2-bit fields in qh, for faster kernels); version-1 files hold JLCM3 in the old layout.
FORMAT_VERSION = 2

JLCM2 = JLCMType("JLCM2", 200, 2)
JLCM3 = JLCMType("JLCM3", 201, 3)
TYPES = {t.name: t for t in (JLCM2, JLCM3)}


def pack(qtype: JLCMType, d: np.ndarray, codebook: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """d: (n,) scales; codebook: (n, n_codes) ints in [-8, 7]; idx: (n, 64) ints < n_codes -> (n, type_size) uint8."""
    n = d.shape[0]
    codebook = np.asarray(codebook)
    idx = np.asarray(idx)
    if codebook.shape != (n, qtype.n_codes) or idx.shape != (n, QK):
        raise ValueError(f"{qtype.name}: expected codebook ({n}, {qtype.n_codes}) and idx ({n}, {QK})")
    if codebook.min(initial=0) < -8 or codebook.max(initial=0) > 7:
        raise ValueError(f"{qtype.name}: codebook entries must lie in [-8, 7]")
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= qtype.n_codes:
        raise ValueError(f"{qtype.name}: indices must lie in [0, {qtype.n_codes})")
    out = np.zeros((n, qtype.type_size), dtype=np.uint8)
    out[:, 0:2] = np.asarray(d, dtype=np.float16).reshape(n, 1).view(np.uint8)
    nib = (codebook + 8).astype(np.uint8)
    out[:, 2:2 + qtype.n_codes // 2] = nib[:, 0::2] | (nib[:, 1::2] << 4)
    q = idx.astype(np.uint8)
    o = 2 + qtype.n_codes // 2
    if qtype.bits == 2:
        out[:, o:o + 16] = _fields2(q)
    else:
        nibbles = q[:, :32] | ((q[:, 32:] >> 2) << 3)               # nibble j: index j, high bit of 32 + j
        out[:, o:o + 16] = nibbles[:, :16] | (nibbles[:, 16:] << 4)
        out[:, o + 16:o + 24] = _fields2(q[:, 32:] & 3)
    return out


def _fields2(q: np.ndarray) -> np.ndarray:
    """(n, 4k) 2-bit values -> (n, k) bytes, value i at bits 2*(i // k) of byte i % k."""
    k = q.shape[1] // 4
    return q[:, :k] | (q[:, k:2 * k] << 2) | (q[:, 2 * k:3 * k] << 4) | (q[:, 3 * k:] << 6)


def _unfields2(b: np.ndarray) -> np.ndarray:
    return np.concatenate([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1)


def unpack(qtype: JLCMType, blocks: np.ndarray):
    """Inverse of pack: (d float16 (n,), codebook int8 (n, n_codes), idx uint8 (n, 64))."""
    blocks = np.asarray(blocks, dtype=np.uint8).reshape(-1, qtype.type_size)
    n = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).reshape(n)
    c = blocks[:, 2:2 + qtype.n_codes // 2]
    codebook = np.empty((n, qtype.n_codes), dtype=np.int8)
    codebook[:, 0::2] = (c & 15).astype(np.int8) - 8
    codebook[:, 1::2] = (c >> 4).astype(np.int8) - 8
    o = 2 + qtype.n_codes // 2
    qs = blocks[:, o:o + 16]
    if qtype.bits == 2:
        idx = _unfields2(qs)
    else:
        nib = np.concatenate([qs & 15, qs >> 4], axis=1)
        idx = np.concatenate([nib & 7, _unfields2(blocks[:, o + 16:o + 24]) | ((nib >> 3) << 2)], axis=1)
    return d, codebook, idx.astype(np.uint8)


def dequantize(qtype: JLCMType, blocks: np.ndarray) -> np.ndarray:
    """Float32 weights of a run of blocks, in order (a row is row_len // 64 consecutive blocks)."""
    d, codebook, idx = unpack(qtype, blocks)
    vals = np.take_along_axis(codebook.astype(np.float32), idx.astype(np.int64), axis=1)
    return (d.astype(np.float32)[:, None] * vals).reshape(-1)
