"""JLCM block formats: the numpy reference for packing, unpacking and dequantizing.

A block holds 64 consecutive weights of one row and decodes on its own:

    JLCM2 (20 bytes, 2.5 bpw)          JLCM3 (30 bytes, 3.75 bpw)
    ggml_half d                        ggml_half d
    uint8_t   cb[2]   4 x int4         uint8_t   cb[4]   8 x int4
    uint8_t   qs[16]  64 x 2-bit       uint8_t   qs[16]  64 x low 2 bits
                                       uint8_t   qh[8]   64 x high bit

    w[i] = d * (nibble(cb, idx[i]) - 8)

Codebook entry k is nibble k of cb (low nibble first), offset by 8, so entries
span [-8, 7]: one pshufb/tbl lookup turns indices into int8 weights. Index i of
a block lives in qs[i % 16] at bits 2*(i // 16); for JLCM3 its high bit is bit
(i // 8) of qh[i % 8]. docs/FORMAT.md has the arithmetic and the alternatives.
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
    lo = q & 3
    o = 2 + qtype.n_codes // 2
    out[:, o:o + 16] = lo[:, 0:16] | (lo[:, 16:32] << 2) | (lo[:, 32:48] << 4) | (lo[:, 48:64] << 6)
    if qtype.bits == 3:
        hi = (q >> 2) & 1
        out[:, o + 16:o + 24] = np.bitwise_or.reduce(hi.reshape(n, 8, 8) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return out


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
    idx = np.concatenate([(qs >> s) & 3 for s in (0, 2, 4, 6)], axis=1)
    if qtype.bits == 3:
        qh = blocks[:, o + 16:o + 24]
        hi = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1   # (n, bit m, byte j)
        idx = idx | (hi.reshape(n, 64) << 2)
    return d, codebook, idx.astype(np.uint8)


def dequantize(qtype: JLCMType, blocks: np.ndarray) -> np.ndarray:
    """Float32 weights of a run of blocks, in order (a row is row_len // 64 consecutive blocks)."""
    d, codebook, idx = unpack(qtype, blocks)
    vals = np.take_along_axis(codebook.astype(np.float32), idx.astype(np.int64), axis=1)
    return (d.astype(np.float32)[:, None] * vals).reshape(-1)
