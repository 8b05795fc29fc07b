"""Blocks, activations and numpy-reference results shared by the kernel tests."""
from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

from jlcm_gguf import pack

ROW_LENGTHS = (64, 576, 704, 1536, 4096, 11008)   # 704: 11 blocks, every loop remainder
Q8_KIND = 8


def q8_0_reference(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_0_ref in numpy: d = amax/127 (fp16, round to nearest even), q = roundf(x * (1/d))."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(x).max(1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (x * inv[:, None]).astype(np.float64)          # the product in float32, as in C
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)         # roundf: halves away from zero
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    with np.errstate(over="ignore"):                   # d beyond fp16 becomes inf, as in ggml
        out[:, :2] = d.astype(np.float16).reshape(-1, 1).view(np.uint8)
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out.reshape(-1)


def q8_0_decode(q8: np.ndarray):
    b = np.asarray(q8, dtype=np.uint8).reshape(-1, 34)
    return b[:, :2].copy().view(np.float16).reshape(-1).astype(np.float64), b[:, 2:].view(np.int8).astype(np.int64)


def dot_reference(qtype, blocks, q8):
    """float64 value of the kernels' formula, and the bound on their float32 error:
    gamma_m * sum|terms| with m = 2 * blocks + 8 (depth of the float32 sums, with slack)."""
    w = pack.dequantize(qtype, blocks).astype(np.float64)
    d, q = q8_0_decode(q8)
    terms = w * (q * d[:, None]).reshape(-1)
    m = 2 * w.size / pack.QK + 8
    u = 2.0 ** -24
    return float(terms.sum()), m * u / (1 - m * u) * float(np.abs(terms).sum())


def random_blocks(qtype, n_blocks, rng) -> np.ndarray:
    """Any index and codebook bytes are valid; the scale is any finite fp16."""
    b = rng.integers(0, 256, (n_blocks, qtype.type_size), dtype=np.uint8)
    h = b[:, :2].copy().view(np.uint16)
    h[(h & 0x7c00) == 0x7c00] &= 0xbfff            # inf/nan exponent -> finite
    b[:, :2] = h.view(np.uint8)
    return b


def adversarial_blocks(qtype, n_blocks) -> np.ndarray:
    """Extreme codebook entries (-8, 7), all-equal indices, fp16 scale extremes, zeros."""
    ds = np.array([1, 65504, 2.0 ** -24, 2.0 ** -14, 0, -1, -65504], dtype=np.float16)
    d = ds[np.arange(n_blocks) % ds.size]
    k = np.arange(n_blocks) % 4
    cb = np.where((k % 2 == 0)[:, None], -8, 7) * np.ones((1, qtype.n_codes), dtype=np.int64)
    idx = np.where((k < 2)[:, None], 0, qtype.n_codes - 1) * np.ones((1, 64), dtype=np.int64)
    return pack.pack(qtype, d, cb, idx)


def activations(n, rng) -> np.ndarray:
    """Normal values with a few massive channels, as real hidden states have."""
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, max(1, n // 200))] *= 50
    return x


@lru_cache(maxsize=None)
def real_blocks(qtype_name: str) -> tuple:
    """JLCM blocks of real default-model weights (layer 0's q_proj and down_proj, data-free learning)."""
    import torch
    from safetensors import safe_open

    from jlcm_gguf import assets, learn
    qtype = pack.TYPES[qtype_name]
    out = []
    with safe_open(assets.hf_model_dir() / "model.safetensors", "pt") as f:
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"):
            w = f.get_tensor(name).float()[:64]
            q = learn.JLCM(qtype, learn.Settings(outer_steps=0, error_feedback=False))
            out.append((name, w.shape, q.quantize(w, torch.eye(w.shape[1])).blocks))
    return tuple(out)


def write_vectors(path, records) -> None:
    """The file csrc/test-jlcm.c reads: (kind, n) then the payload, per record."""
    with open(path, "wb") as f:
        for rec in records:
            if rec[0] == Q8_KIND:
                x = np.asarray(rec[1], dtype=np.float32)
                f.write(struct.pack("<II", Q8_KIND, x.size) + x.tobytes() + q8_0_reference(x).tobytes())
            else:
                qtype, blocks, q8 = rec
                n = blocks.size // qtype.type_size * pack.QK
                dot, bound = dot_reference(qtype, blocks, q8)
                f.write(struct.pack("<II", qtype.type_id, n) + np.ascontiguousarray(blocks).tobytes()
                        + pack.dequantize(qtype, blocks).astype(np.float32).tobytes() + q8.tobytes()
                        + struct.pack("<dd", dot, bound))


def vector_records(seed=0) -> list:
    rng = np.random.default_rng(seed)
    recs = []
    for qtype in pack.TYPES.values():
        for n in ROW_LENGTHS:
            recs.append((qtype, random_blocks(qtype, n // 64, rng), q8_0_reference(activations(n, rng))))
            recs.append((qtype, adversarial_blocks(qtype, n // 64), q8_0_reference(activations(n, rng))))
        for _, shape, blocks in real_blocks(qtype.name):
            rows = blocks.reshape(shape[0], -1)
            for r in (0, shape[0] - 1):
                recs.append((qtype, rows[r], q8_0_reference(activations(shape[1], rng))))
    for n in (32, 576, 4096):
        recs.append((Q8_KIND, activations(n, rng)))
    recs.append((Q8_KIND, np.zeros(64, dtype=np.float32)))
    return recs
