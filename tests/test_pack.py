"""Block formats: bit-exact round trips, bpw from the layout, decode formula, bad input refused."""
import numpy as np
import pytest

from jlcm_gguf import pack


@pytest.mark.parametrize("qtype", list(pack.TYPES.values()), ids=lambda t: t.name)
def test_round_trip_is_bit_exact(qtype):
    rng = np.random.default_rng(1)
    n = 257
    d = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4, n)).astype(np.float16)
    d[:3] = [0, np.float16(65504), np.float16(-6e-8)]
    cb = rng.integers(-8, 8, (n, qtype.n_codes))
    cb[3] = -8
    cb[4] = 7
    idx = rng.integers(0, qtype.n_codes, (n, 64))
    idx[5] = 0
    idx[6] = qtype.n_codes - 1
    blocks = pack.pack(qtype, d, cb, idx)
    assert blocks.shape == (n, qtype.type_size)
    d2, cb2, idx2 = pack.unpack(qtype, blocks)
    assert np.array_equal(d2.view(np.uint16), d.view(np.uint16))
    assert np.array_equal(cb2, cb) and np.array_equal(idx2, idx)
    assert np.array_equal(pack.pack(qtype, d2, cb2, idx2), blocks)
    w = pack.dequantize(qtype, blocks).reshape(n, 64)
    expect = d.astype(np.float32)[:, None] * np.take_along_axis(cb, idx, 1).astype(np.float32)
    assert np.array_equal(w, expect)


def test_bits_per_weight_follow_the_layout():
    assert (pack.JLCM2.type_size, pack.JLCM2.bpw) == (2 + 2 + 16, 2.5)
    assert (pack.JLCM3.type_size, pack.JLCM3.bpw) == (2 + 4 + 24, 3.75)
    assert pack.JLCM2.type_id >= 100 and pack.JLCM3.type_id >= 100


def test_known_bytes_of_one_block():
    """Pins the documented layout: nibble order of the codebook and bit positions of the indices."""
    idx = np.zeros((1, 64), dtype=np.int64)
    idx[0, 1] = 1        # qs[1] bits 0-1
    idx[0, 17] = 2       # qs[1] bits 2-3
    idx[0, 63] = 3       # qs[15] bits 6-7
    blocks = pack.pack(pack.JLCM2, np.array([1.0], np.float16), np.array([[-8, -1, 0, 7]]), idx)
    assert blocks[0, :2].tolist() == [0x00, 0x3C]                 # fp16 1.0, little endian
    assert blocks[0, 2:4].tolist() == [0x70, 0xF8]                # (-8+8) | (-1+8)<<4, (0+8) | (7+8)<<4
    assert blocks[0, 4 + 1] == 1 | (2 << 2) and blocks[0, 4 + 15] == 3 << 6
    idx3 = np.zeros((1, 64), dtype=np.int64)
    idx3[0, 9] = 4       # high bit -> qh[1] bit 1
    b3 = pack.pack(pack.JLCM3, np.array([1.0], np.float16), np.zeros((1, 8), np.int64), idx3)
    assert b3[0, 6 + 16 + 1] == 1 << 1 and b3[0, 6:22].sum() == 0


def test_out_of_range_input_is_refused():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack.pack(pack.JLCM2, np.ones(1, np.float16), np.array([[8, 0, 0, 0]]), np.zeros((1, 64), int))
    with pytest.raises(ValueError, match="indices"):
        pack.pack(pack.JLCM2, np.ones(1, np.float16), np.zeros((1, 4), int), np.full((1, 64), 4))
