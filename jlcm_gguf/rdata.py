"""A reader for R's serialized objects, enough for character vectors in a lazy-load database.

R packages with LazyData keep their data sets as `Rdata.rdx` (an index) and
`Rdata.rdb` (the objects), each object in R's XDR serialization, compressed.
Only what a text data set needs is decoded: vectors, strings, pairlists,
attributes and the ALTREP wrappers R 3.5+ writes; environments, byte code and
other types are refused with a clear error rather than half-read.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
VECSXP, EXPRSXP, RAWSXP, S4SXP = 19, 20, 24, 25
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

_SINGLETONS = {NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP,
               BASENAMESPACE_SXP, EMPTYENV_SXP, BASEENV_SXP}


class RDataError(ValueError):
    pass


class Symbol(str):
    """An R symbol, kept apart from character data."""


class Pairlist(list):
    """An R pairlist: a list of (tag, value) pairs."""


class Vector(list):
    """An R vector with its attributes (names, class, ...)."""

    attrs: dict

    def __init__(self, values=(), attrs=None):
        super().__init__(values)
        self.attrs = attrs or {}

    def named(self) -> dict:
        return dict(zip(self.attrs.get("names", []), self))


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError("serialized R object is truncated")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        fmt = self.take(2)
        if fmt != b"X\n":
            raise RDataError(f"only R's XDR serialization is supported, got format {fmt!r}")
        version = self.int()
        self.int()  # writer's R version
        self.int()  # oldest R version that reads it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"unsupported R serialization version {version}")

    def item(self):
        flags = self.int()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if kind in _SINGLETONS:
            return None
        if kind == REFSXP:
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if kind in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
            if self.int() != 0:
                raise RDataError("malformed persistent-name string vector")
            names = [self.item() for _ in range(self.int())]
            self.refs.append(names)
            return names
        if kind == SYMSXP:
            sym = Symbol(self.item())
            self.refs.append(sym)
            return sym
        if kind in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, ATTRLANGSXP, ATTRLISTSXP):
            return self.pairlist(has_attr, has_tag)
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.take(n).decode("utf-8", errors="replace")
        if kind == ALTREP_SXP:
            return self.altrep()
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            value = (struct.unpack(f">{n}i", self.take(4 * n)))
        elif kind == REALSXP:
            n = self.length()
            value = (struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == STRSXP:
            value = [self.item() for _ in range(self.length())]
        elif kind in (VECSXP, EXPRSXP):
            value = [self.item() for _ in range(self.length())]
        elif kind == RAWSXP:
            value = self.take(self.length())
        else:
            raise RDataError(f"R object type {kind} is not supported by this reader")
        attrs = {str(t): v for t, v in self.item()} if has_attr else {}
        return value if kind == RAWSXP else Vector(value, attrs)

    def pairlist(self, has_attr: bool, has_tag: bool) -> Pairlist:
        out = Pairlist()
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            out.append((tag, self.item()))
            flags = self.int()
            kind = flags & 0xFF
            if kind not in (LISTSXP, ATTRLISTSXP):
                self.pos -= 4
                tail = self.item()
                if tail is not None:
                    out.append((None, tail))
                return out
            has_attr = bool(flags & (1 << 9))
            has_tag = bool(flags & (1 << 10))

    def altrep(self):
        info = self.item()
        state = self.item()
        self.item()  # attributes
        cls = info[0][1] if isinstance(info, Pairlist) else None
        if cls in ("wrap_string", "wrap_integer", "wrap_real", "wrap_logical"):
            return state[0]
        if cls == "deferred_string":
            return [str(v) for v in state[0][1]] if isinstance(state, Pairlist) else state
        if cls == "compact_intseq":
            n, start, step = int(state[0]), int(state[1]), int(state[2])
            return list(range(start, start + n * step, step))
        raise RDataError(f"ALTREP class {cls!r} is not supported by this reader")


def unserialize(data: bytes):
    r = _Reader(data)
    r.header()
    return r.item()


def _decompress(blob: bytes) -> bytes:
    """One lazy-load record: a 4-byte big-endian length, then zlib, or a type byte and bzip2/xz."""
    (n,) = struct.unpack(">I", blob[:4])
    kind = blob[4:5]
    if kind == b"2":
        out = bz2.decompress(blob[5:])
    elif kind == b"X":
        out = lzma.decompress(blob[5:])
    elif kind == b"0":
        out = blob[5:]
    else:
        out = zlib.decompress(blob[4:])
    if len(out) != n:
        raise RDataError(f"lazy-load record decompressed to {len(out)} bytes, header says {n}")
    return out


def _read_rds(path: Path) -> bytes:
    """An .rds/.rdx file: saveRDS output, gzip-, bzip2- or xz-compressed or plain."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    return raw


def read_lazyload_db(rdx: Path) -> dict:
    """Every object in an R lazy-load database (the .rdx index and its .rdb beside it)."""
    rdx = Path(rdx)
    rdb = rdx.with_suffix(".rdb")
    index = unserialize(_read_rds(rdx))
    variables = index.named()["variables"].named()
    blob = rdb.read_bytes()
    return {name: unserialize(_decompress(blob[off:off + n])) for name, (off, n) in variables.items()}
