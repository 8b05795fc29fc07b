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
    idx3[0, 9] = 5       # nibble 9: qs[9] bits 0-2
    idx3[0, 20] = 7      # nibble 20: qs[4] bits 4-6
    idx3[0, 32 + 9] = 6  # low bits 2 -> qh[1] field 1; high bit -> bit 3 of nibble 9
    idx3[0, 32 + 30] = 5 # low bits 1 -> qh[6] field 3; high bit -> bit 3 of nibble 30 (qs[14] bit 7)
    b3 = pack.pack(pack.JLCM3, np.array([1.0], np.float16), np.zeros((1, 8), np.int64), idx3)
    qs, qh = b3[0, 6:22], b3[0, 22:30]
    assert qs[9] == 5 | 8 and qs[4] == 7 << 4 and qs[14] == 8 << 4
    assert qs.sum() == qs[9] + qs[4] + qs[14]
    assert qh[1] == 2 << 2 and qh[6] == 1 << 6 and qh.sum() == qh[1] + qh[6]


def test_out_of_range_input_is_refused():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack.pack(pack.JLCM2, np.ones(1, np.float16), np.array([[8, 0, 0, 0]]), np.zeros((1, 64), int))
    with pytest.raises(ValueError, match="indices"):
        pack.pack(pack.JLCM2, np.ones(1, np.float16), np.zeros((1, 4), int), np.full((1, 64), 4))


@pytest.mark.parametrize("version", [1, pack.FORMAT_VERSION])
def test_reader_refuses_jlcm3_in_the_old_bit_layout(tmp_path, version):
    """Version-1 files hold JLCM3 indices at other bits: reading one must fail, not give other weights."""
    import gguf
    from jlcm_gguf import gguf_io

    gguf_io.register_types()
    path = tmp_path / f"v{version}.gguf"
    w = gguf.GGUFWriter(path, "llama", use_temp_file=False)
    w.add_uint32("jlcm.format_version", version)
    blocks = pack.pack(pack.JLCM3, np.ones(2, np.float16), np.zeros((2, 8), np.int64), np.zeros((2, 64), np.int64))
    w.add_tensor("blk.0.ffn_down.weight", blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.JLCM3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    if version < 2:
        with pytest.raises(gguf_io.GGUFFormatError, match="format-version-1 bit layout.*convert the model again"):
            gguf_io.open_reader(path)
    else:
        assert [t.tensor_type.name for t in gguf_io.open_reader(path).tensors] == ["JLCM3"]
