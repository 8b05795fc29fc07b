"""The C kernels of csrc/ (built by the package install with cffi), on numpy arrays.

    dequantize(qtype, blocks)            -> float32 weights (scalar reference)
    quantize_q8_0(x)                     -> ggml Q8_0 blocks (uint8, 34 bytes per 32 values)
    quantize(qtype, x, imatrix=None)     -> JLCM blocks by the data-free reference quantizer
                                            (what llama.cpp's from_float / llama-quantize use)
    vec_dot(qtype, blocks, q8, impl=...) -> float: one row of JLCM blocks against Q8_0 activations
    repack_x8(qtype, blocks)             -> rows as llama.cpp's repack path holds them (x86, AVX2)
    gemv_x8(qtype, packed, q8, impl=...) -> float32 per row: the repacked rows against Q8_0 activations

impl="simd" (default: the compiled SIMD path, `simd_name()`; the reference where
there is none) or "scalar" (the reference), so tests can compare the two.
"""
from __future__ import annotations

import numpy as np

from . import pack

try:
    from ._kernels import ffi, lib
except ImportError as e:  # pragma: no cover - a broken install
    raise ImportError("jlcm_gguf's C kernels are not built: reinstall the package "
                      "(pip install -e .) with a C compiler present") from e

Q8_0_BLOCK = 32
Q8_0_BYTES = 34

_DEQUANT = {"JLCM2": lib.dequantize_row_jlcm2_ref, "JLCM3": lib.dequantize_row_jlcm3_ref}
_DOT = {("JLCM2", "scalar"): lib.vec_dot_jlcm2_q8_0_ref, ("JLCM2", "simd"): lib.vec_dot_jlcm2_q8_0_simd,
        ("JLCM3", "scalar"): lib.vec_dot_jlcm3_q8_0_ref, ("JLCM3", "simd"): lib.vec_dot_jlcm3_q8_0_simd}


def simd_name() -> str | None:
    """The SIMD path compiled into this build ("avx2", "neon-dotprod", "neon"), or None."""
    p = lib.jlcm_simd_name()
    return None if p == ffi.NULL else ffi.string(p).decode()


def _blocks(qtype: pack.JLCMType, blocks) -> np.ndarray:
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1)
    if b.size % qtype.type_size:
        raise ValueError(f"{qtype.name}: {b.size} bytes is not a whole number of {qtype.type_size}-byte blocks")
    return b


def dequantize(qtype: pack.JLCMType, blocks) -> np.ndarray:
    b = _blocks(qtype, blocks)
    k = b.size // qtype.type_size * pack.QK
    out = np.empty(k, dtype=np.float32)
    ctype = f"block_{qtype.name.lower()} *"
    _DEQUANT[qtype.name](ffi.cast(ctype, ffi.from_buffer(b)), ffi.from_buffer("float[]", out), k)
    return out


def quantize_q8_0(x) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if x.size % Q8_0_BLOCK:
        raise ValueError(f"Q8_0 needs a multiple of {Q8_0_BLOCK} values, got {x.size}")
    out = np.empty(x.size // Q8_0_BLOCK * Q8_0_BYTES, dtype=np.uint8)
    lib.quantize_row_q8_0_jlcm_ref(ffi.from_buffer("float[]", x), ffi.cast("block_q8_0_jlcm *", ffi.from_buffer(out)), x.size)
    return out


_QUANT = {"JLCM2": lib.quantize_jlcm2, "JLCM3": lib.quantize_jlcm3}


def quantize(qtype: pack.JLCMType, x, imatrix=None) -> np.ndarray:
    """x (rows, n_per_row), n_per_row a multiple of 64 -> blocks (rows, row bytes); imatrix: per-column
    importance (n_per_row,) or None."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % pack.QK:
        raise ValueError(f"{qtype.name}: need (rows, n) with n a multiple of {pack.QK}, got shape {x.shape}")
    rows, n = x.shape
    out = np.empty((rows, n // pack.QK * qtype.type_size), dtype=np.uint8)
    imat = ffi.NULL
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if imatrix.size != n:
            raise ValueError(f"imatrix has {imatrix.size} values for rows of {n}")
        imat = ffi.from_buffer("float[]", imatrix)
    _QUANT[qtype.name](ffi.from_buffer("float[]", x), ffi.from_buffer(out), rows, n, imat)
    return out


def vec_dot(qtype: pack.JLCMType, blocks, q8, impl: str = "simd") -> float:
    if impl not in ("simd", "scalar"):
        raise ValueError(f"impl must be 'simd' or 'scalar', got {impl!r}")
    b = _blocks(qtype, blocks)
    y = np.ascontiguousarray(q8, dtype=np.uint8).reshape(-1)
    n = b.size // qtype.type_size * pack.QK
    if y.size != n // Q8_0_BLOCK * Q8_0_BYTES:
        raise ValueError(f"{n} weights need {n // Q8_0_BLOCK} Q8_0 blocks ({n // Q8_0_BLOCK * Q8_0_BYTES} bytes), "
                         f"got {y.size} bytes")
    s = ffi.new("float *")
    _DOT[qtype.name, impl](n, s, 0, ffi.from_buffer(b), 0, ffi.from_buffer(y), 0, 1)
    return float(s[0])



_REPACK = {"JLCM2": lib.repack_jlcm2x8, "JLCM3": lib.repack_jlcm3x8}
_GEMV = {("JLCM2", "scalar"): lib.gemv_jlcm2x8_q8_0_ref, ("JLCM2", "simd"): lib.gemv_jlcm2x8_q8_0,
         ("JLCM3", "scalar"): lib.gemv_jlcm3x8_q8_0_ref, ("JLCM3", "simd"): lib.gemv_jlcm3x8_q8_0}


def repack_x8(qtype: pack.JLCMType, blocks) -> np.ndarray:
    """JLCM blocks (rows, row bytes), rows a multiple of 8 -> the same bytes interleaved eight rows at a
    time (block_jlcm2x8 / block_jlcm3x8), as llama.cpp's repack path holds the tensor on x86 with AVX2."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8)
    if b.ndim != 2 or b.shape[1] % qtype.type_size:
        raise ValueError(f"{qtype.name}: need (rows, row bytes) of whole blocks, got shape {b.shape}")
    rows, n = b.shape[0], b.shape[1] // qtype.type_size * pack.QK
    out = np.empty_like(b)
    src = ffi.cast(f"block_{qtype.name.lower()} *", ffi.from_buffer(b))
    if _REPACK[qtype.name](ffi.from_buffer(out), src, rows, n):
        raise ValueError(f"{qtype.name} repack: {rows} rows is not a multiple of 8")
    return out


def gemv_x8(qtype: pack.JLCMType, packed, q8, impl: str = "simd") -> np.ndarray:
    """Every row of a repacked matrix (repack_x8's output) times one row of Q8_0 activations."""
    if impl not in ("simd", "scalar"):
        raise ValueError(f"impl must be 'simd' or 'scalar', got {impl!r}")
    x = np.ascontiguousarray(packed, dtype=np.uint8)
    y = np.ascontiguousarray(q8, dtype=np.uint8).reshape(-1)
    rows, n = x.shape[0], x.shape[1] // qtype.type_size * pack.QK
    if y.size != n // Q8_0_BLOCK * Q8_0_BYTES:
        raise ValueError(f"{n} weights need {n // Q8_0_BLOCK * Q8_0_BYTES} bytes of Q8_0, got {y.size}")
    out = np.empty(rows, dtype=np.float32)
    _GEMV[qtype.name, impl](n, ffi.from_buffer("float[]", out), 0, ffi.from_buffer(x), ffi.from_buffer(y), 1, rows)
    return out


# -- the learner's column walks (csrc/jlcm-walk.c; not part of the format) ---------------------------
def _rows(a: np.ndarray, dtype, ctype: str, what: str):
    """A pointer to a 2-D array whose rows may be strided but whose elements are contiguous."""
    if a.dtype != dtype or a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        raise ValueError(f"{what}: need a 2-D {np.dtype(dtype).name} array with contiguous rows")
    return ffi.cast(ctype, a.ctypes.data), a.strides[0] // a.itemsize


def _walk_args(S, CB, K_max=16):
    rows, nb, K = CB.shape
    if not (CB.flags.c_contiguous and S.flags.c_contiguous) or S.shape != (rows, nb) or K > K_max:
        raise ValueError(f"walk: need contiguous scales (rows, blocks) and codebooks (rows, blocks, K <= {K_max})")
    return rows, nb, K, ffi.cast("float *", S.ctypes.data), ffi.cast("float *", CB.ctypes.data)


def walk_feedback(W, S, CB, U, col_block, idx, err) -> None:
    """learn.JLCM._walk_block in C: assigns the columns of the block W (rows, width), in place, in their
    order there. col_block (width,) int64: each column's block column in S and CB. S (rows, blocks)
    scales, CB (rows, blocks, K) codebooks, U the block's (width, width) corner of the Cholesky factor;
    writes idx (rows, width; int64) and err (rows, width)."""
    rows, nb, K, s, cb = _walk_args(S, CB)
    w, ld_w = _rows(W, np.float32, "float *", "W")
    u, ld_u = _rows(U, np.float32, "float *", "U")
    i, ld_i = _rows(idx, np.int64, "int64_t *", "idx")
    e, ld_e = _rows(err, np.float32, "float *", "err")
    col_block = np.ascontiguousarray(col_block, dtype=np.int64)
    if col_block.shape != (W.shape[1],) or col_block.min(initial=0) < 0 or col_block.max(initial=0) >= nb:
        raise ValueError(f"walk: col_block must give each of the {W.shape[1]} columns a block column below {nb}")
    lib.jlcm_walk_feedback(rows, W.shape[1], ffi.cast("int64_t *", col_block.ctypes.data), K, w, ld_w, s, nb, cb,
                           u, ld_u, i, ld_i, e, ld_e)


def walk_sweep(what, EHb, S, CB, H, hd, col0: int, qk: int, proximal: bool, idx, D) -> None:
    """One block of learn.JLCM.sweep_indices in C: columns col0 .. col0 + width - 1 (width = EHb's).
    what, idx: (rows, cols) whole rows, updated in the block; EHb (rows, width) updated; H: rows
    col0.. of H from column col0 (width, >= width); hd: H's diagonal from col0; D (rows, width) the moves."""
    rows, nb, K, s, cb = _walk_args(S, CB)
    wh, ld_wh = _rows(what, np.float32, "float *", "what")
    eh, ld_eh = _rows(EHb, np.float32, "float *", "EHb")
    h, ld_h = _rows(H, np.float32, "float *", "H")
    i, ld_i = _rows(idx, np.int64, "int64_t *", "idx")
    d, ld_d = _rows(D, np.float32, "float *", "D")
    hd = np.ascontiguousarray(hd, dtype=np.float32)
    lib.jlcm_walk_sweep(rows, EHb.shape[1], col0, K, qk, int(proximal), wh, ld_wh, eh, ld_eh, s, nb, cb,
                        h, ld_h, ffi.cast("float *", hd.ctypes.data), i, ld_i, d, ld_d)
