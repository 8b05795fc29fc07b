"""R serialization: hand-made objects, then the real janeaustenr database."""
import struct
import zlib

import pytest

from jlcm_gguf import assets, rdata


def xdr(*ints):
    return b"".join(struct.pack(">i", i) for i in ints)


def charsxp(s):
    if s is None:
        return xdr(9, -1)
    b = s.encode()
    return xdr(9 | (1 << 15), len(b)) + b  # UTF-8 flag in the levels bits


def header():
    return b"X\n" + xdr(3, 0x040200, 0x030500, 5) + b"UTF-8"


def test_string_vector_with_na():
    data = header() + xdr(16, 3) + charsxp("It is a truth") + charsxp(None) + charsxp("universally acknowledged")
    assert rdata.unserialize(data) == ["It is a truth", None, "universally acknowledged"]


def test_named_list_keeps_names():
    names_attr = xdr(2 | (1 << 10)) + xdr(1) + charsxp("names") + xdr(16, 2) + charsxp("a") + charsxp("b") + xdr(254)
    data = header() + xdr(19 | (1 << 9), 2) + xdr(13, 2, 1, 2) + xdr(14, 1) + struct.pack(">d", 0.5) + names_attr
    obj = rdata.unserialize(data)
    assert obj.named() == {"a": [1, 2], "b": [0.5]}


def test_truncated_input_is_an_error():
    data = header() + xdr(16, 3) + charsxp("only one")
    with pytest.raises(rdata.RDataError, match="truncated"):
        rdata.unserialize(data)


def test_unknown_format_is_refused():
    with pytest.raises(rdata.RDataError, match="XDR"):
        rdata.unserialize(b"A\n" + xdr(3))


def test_lazyload_record_length_is_checked():
    payload = header() + xdr(16, 0)
    good = struct.pack(">I", len(payload)) + zlib.compress(payload)
    assert rdata.unserialize(rdata._decompress(good)) == []
    bad = struct.pack(">I", len(payload) + 1) + zlib.compress(payload)
    with pytest.raises(rdata.RDataError):
        rdata._decompress(bad)


def test_novels_have_known_lengths(novels):
    for name, path in novels.items():
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]
        assert len(lines) == assets.NOVEL_LINES[name], name
    assert novels["prideprejudice"].read_text(encoding="utf-8").startswith("PRIDE AND PREJUDICE\n")
    assert novels["emma"].read_text(encoding="utf-8").startswith("EMMA\n")
    text = novels["prideprejudice"].read_text(encoding="utf-8")
    assert "It is a truth universally acknowledged" in text
    assert sum(assets.NOVEL_LINES.values()) == 73422  # rows of janeaustenr::austen_books()


def test_calibration_and_evaluation_are_disjoint():
    assert set(assets.CALIBRATION_NOVELS).isdisjoint(assets.EVALUATION_NOVELS)
    assert set(assets.CALIBRATION_NOVELS) | set(assets.EVALUATION_NOVELS) == set(assets.NOVEL_LINES)
    assert assets.CALIB_TEXT in assets.CALIBRATION_NOVELS and assets.EVAL_TEXT in assets.EVALUATION_NOVELS
