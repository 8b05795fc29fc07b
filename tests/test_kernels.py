"""The C kernels (csrc/, through cffi) against the numpy reference, and SIMD against scalar."""
import platform

import numpy as np
import pytest

from jlcm_gguf import kernels, pack

from kernel_vectors import (ROW_LENGTHS, activations, adversarial_blocks, dot_reference, q8_0_reference,
                            random_blocks, real_blocks)

TYPES = list(pack.TYPES.values())
ids = lambda t: t.name  # noqa: E731


def test_the_host_simd_path_is_built():
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    if platform.machine() == "x86_64" and " avx2" in flags:
        assert kernels.simd_name() == "avx2"
    elif platform.machine() == "aarch64":
        assert kernels.simd_name() in ("neon", "neon-dotprod")


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_is_bit_exact_on_real_tensors(qtype):
    for name, shape, blocks in real_blocks(qtype.name):
        got = kernels.dequantize(qtype, blocks)
        assert got.size == shape[0] * shape[1]
        assert np.array_equal(got.view(np.uint32), pack.dequantize(qtype, blocks).view(np.uint32)), name


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_is_bit_exact_on_random_and_adversarial_blocks(qtype):
    rng = np.random.default_rng(2)
    for blocks in (random_blocks(qtype, 4096, rng), adversarial_blocks(qtype, 64)):
        got = kernels.dequantize(qtype, blocks)
        assert np.array_equal(got.view(np.uint32), pack.dequantize(qtype, blocks).view(np.uint32))


def test_q8_0_matches_ggml_reference():
    rng = np.random.default_rng(3)
    x = activations(32 * 500, rng)
    x[:32] = 0                                    # d = 0
    x[32:64] = np.linspace(-127, 127, 32)         # d = 1 exactly, q = x
    x[64:96] = np.arange(32) - 15.5               # halves: roundf rounds them away from zero
    x[95] = 127                                   # d = 1
    x[96] = 1e30                                  # d overflows fp16 (inf), as in ggml
    got = kernels.quantize_q8_0(x)
    assert np.array_equal(got, q8_0_reference(x))
    q = got.reshape(-1, 34)[2, 2:].view(np.int8)
    assert q[0] == -16 and q[30] == 15            # -15.5 -> -16, 14.5 -> 15 (not 14: not to even)


@pytest.mark.parametrize("impl", ["scalar", "simd"])
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_vec_dot_within_float64_bound(qtype, impl):
    rng = np.random.default_rng(4)
    cases = [(rows, q8_0_reference(activations(shape[1], rng)))
             for _, shape, blocks in real_blocks(qtype.name) for rows in blocks.reshape(shape[0], -1)[:8]]
    for n in ROW_LENGTHS:
        cases.append((random_blocks(qtype, n // 64, rng), q8_0_reference(activations(n, rng))))
        cases.append((adversarial_blocks(qtype, n // 64), q8_0_reference(activations(n, rng))))
    for blocks, q8 in cases:
        want, bound = dot_reference(qtype, blocks, q8)
        assert abs(kernels.vec_dot(qtype, blocks, q8, impl) - want) <= bound


def exact_case(qtype, n, rng):
    """Blocks and activations whose float arithmetic is exact (scales +-2^e, e in [e0, e0+1]; the
    activations' 2^e0), so scalar and SIMD must agree bit for bit and any difference is in the integers."""
    e0 = int(rng.integers(-12, -2))
    blocks = random_blocks(qtype, n // 64, rng)
    d = (rng.choice([-1.0, 1.0], n // 64) * 2.0 ** (e0 + rng.integers(0, 2, n // 64))).astype(np.float16)
    blocks[:, :2] = d.reshape(-1, 1).view(np.uint8)
    q8 = np.empty((n // 32, 34), dtype=np.uint8)
    q8[:, :2] = np.full((n // 32, 1), 2.0 ** e0, dtype=np.float16).view(np.uint8)
    q8[:, 2:] = rng.integers(-127, 128, (n // 32, 32)).astype(np.int8).view(np.uint8)
    return blocks, q8.reshape(-1)


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_simd_equals_scalar_exactly(qtype, n):
    rng = np.random.default_rng(n)
    for _ in range(10):
        blocks, q8 = exact_case(qtype, n, rng)
        want, _ = dot_reference(qtype, blocks, q8)
        scalar = kernels.vec_dot(qtype, blocks, q8, "scalar")
        assert scalar == want
        assert kernels.vec_dot(qtype, blocks, q8, "simd") == scalar


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="whole number"):
        kernels.dequantize(pack.JLCM2, np.zeros(21, dtype=np.uint8))
    with pytest.raises(ValueError, match="Q8_0 blocks"):
        kernels.vec_dot(pack.JLCM2, np.zeros(20, dtype=np.uint8), np.zeros(34, dtype=np.uint8))
    with pytest.raises(ValueError, match="impl"):
        kernels.vec_dot(pack.JLCM2, np.zeros(20, dtype=np.uint8), np.zeros(68, dtype=np.uint8), "avx512")


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_data_free_quantizer_on_the_default_models_embedding(qtype):
    """The reference quantizer (what llama.cpp's from_float and our JLCM embeddings use): on real
    embedding rows its blocks decode within about the error a 4/8-level scalar quantizer leaves on
    Gaussian data (0.34 / 0.19), an importance matrix moves the error inside a block toward its
    unimportant columns, and it is deterministic."""
    from jlcm_gguf import assets
    from jlcm_gguf.calibrate import WeightStore
    w = WeightStore(assets.hf_model_dir()).get("model.embed_tokens.weight")[:512].float().numpy()
    blocks = kernels.quantize(qtype, w)
    assert blocks.shape == (512, w.shape[1] // pack.QK * qtype.type_size)
    err = w - pack.dequantize(qtype, blocks).reshape(w.shape)
    rel = np.linalg.norm(err) / np.linalg.norm(w)
    assert rel < {"JLCM2": 0.36, "JLCM3": 0.21}[qtype.name], rel
    imat = np.ones(w.shape[1], dtype=np.float32)
    imat[::2] = 100.0                       # every even column matters 100x more
    err_i = w - pack.dequantize(qtype, kernels.quantize(qtype, w, imat)).reshape(w.shape)
    assert np.linalg.norm(err_i[:, ::2]) < 0.97 * np.linalg.norm(err[:, ::2])
    assert np.linalg.norm(err_i[:, 1::2]) > np.linalg.norm(err[:, 1::2])
    assert np.array_equal(kernels.quantize(qtype, w), blocks)
    with pytest.raises(ValueError, match="multiple of 64"):
        kernels.quantize(qtype, w[:, :100])



@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_repacked_gemv_equals_the_row_dot_products_on_real_weights(qtype):
    """llama.cpp's repack path on x86: eight rows interleaved, one pass for eight dot products. The
    scalar gemv sums in vec_dot's order (equal bit for bit); the SIMD one within vec_dot's float64 bound."""
    rng = np.random.default_rng(6)
    for name, shape, blocks in real_blocks(qtype.name):
        rows = blocks.reshape(shape[0], -1)[:64]
        packed = kernels.repack_x8(qtype, rows)
        assert packed.shape == rows.shape and not np.array_equal(packed, rows)
        q8 = q8_0_reference(activations(shape[1], rng))
        want = np.array([kernels.vec_dot(qtype, r, q8, "scalar") for r in rows], dtype=np.float32)
        assert np.array_equal(kernels.gemv_x8(qtype, packed, q8, "scalar"), want), name
        simd = kernels.gemv_x8(qtype, packed, q8, "simd")
        for r, got in zip(rows, simd):
            ref, bound = dot_reference(qtype, r, q8)
            assert abs(got - ref) <= bound, name


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
@pytest.mark.parametrize("n", ROW_LENGTHS)
def test_repacked_gemv_is_exact_on_exact_data(qtype, n):
    rng = np.random.default_rng(n + 1)
    rows, q8 = zip(*(exact_case(qtype, n, rng) for _ in range(16)))
    q8 = q8[0]
    rows = np.stack([r.reshape(-1) for r in rows])
    want = [dot_reference(qtype, r, q8)[0] for r in rows]
    assert kernels.gemv_x8(qtype, kernels.repack_x8(qtype, rows), q8, "simd").tolist() == want


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_repack_refuses_rows_not_a_multiple_of_8(qtype):
    with pytest.raises(ValueError, match="multiple of 8"):
        kernels.repack_x8(qtype, np.zeros((12, qtype.type_size), dtype=np.uint8))
