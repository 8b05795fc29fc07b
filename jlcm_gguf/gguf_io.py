"""Reading and writing GGUF files through gguf-py, with the JLCM types registered."""
from __future__ import annotations

from pathlib import Path

from . import pack


class GGUFFormatError(ValueError):
    pass


def register_types() -> None:
    """Teach gguf-py the JLCM tensor types (idempotent). Call before any GGUFReader or GGUFWriter use.

    gguf-py's GGMLQuantizationType is a closed IntEnum and its reader looks every tensor's type id up
    in it, so each JLCM type is added as a member; GGML_QUANT_SIZES gives the writer and the reader
    the block geometry."""
    import gguf

    enum = gguf.GGMLQuantizationType
    for t in pack.TYPES.values():
        if t.type_id in enum._value2member_map_:
            if enum._value2member_map_[t.type_id].name != t.name:
                raise RuntimeError(f"gguf-py already uses type id {t.type_id} for "
                                   f"{enum._value2member_map_[t.type_id].name}, not {t.name}")
        else:
            member = int.__new__(enum, t.type_id)
            member._name_, member._value_ = t.name, t.type_id
            member.__objclass__ = enum
            member.__init__(t.type_id)
            type.__setattr__(enum, t.name, member)
            enum._member_map_[t.name] = member
            enum._value2member_map_[t.type_id] = member
            enum._member_names_.append(t.name)
        gguf.GGML_QUANT_SIZES[enum(t.type_id)] = (t.block_size, t.type_size)


def open_reader(path: Path):
    """A GGUFReader for path (JLCM types known), with a one-line error for a file that is not a readable GGUF."""
    from gguf import GGUFReader

    register_types()
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, OSError, KeyError) as e:
        raise GGUFFormatError(f"{path}: not a readable GGUF file ({e})") from e
    check_format_version(path, reader)
    return reader


def check_format_version(path: Path, reader) -> None:
    """Refuse a file whose JLCM3 tensors use the version-1 bit layout: its bytes would decode to
    other weights without any error."""
    field = reader.fields.get("jlcm.format_version")
    if field is None:
        return
    version = int(field.parts[field.data[0]][0])
    if version < 2 and any(t.tensor_type.name == pack.JLCM3.name for t in reader.tensors):
        raise GGUFFormatError(f"{path}: JLCM3 tensors in the format-version-{version} bit layout, which "
                              f"this jlcm-gguf no longer reads (version {pack.FORMAT_VERSION}); "
                              "convert the model again with `jlcm-gguf convert`")
