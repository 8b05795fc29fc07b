"""Writing the JLCM GGUF: the pinned converter's file, with the chosen tensors replaced.

llama.cpp's own convert_hf_to_gguf.py writes the reference file (metadata,
tokenizer, tensor names and order, the q/k row permutation); this module
copies it key by key and tensor by tensor, and swaps in what the quantizer
made: JLCM blocks for the linears, the distilled norm gains, the embedding in
the type asked for. So everything that is not a JLCM tensor is the
converter's own output.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cache, pack
from .gguf_io import open_reader, register_types

# HF module names of a llama-family decoder layer -> GGUF tensor names (llama.cpp's tensor map)
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}

LINEAR_CLASSES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

# llama_ftype values for files whose linears are mostly JLCM (high, like the tensor type ids)
FILE_TYPES = {"JLCM2": 200, "JLCM3": 201}
FORMAT_VERSION = pack.FORMAT_VERSION


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
    if not m or m.group(2) not in _LAYER_NAMES:
        raise KeyError(f"no GGUF name for {hf_name}")
    return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def qk_row_order(rows: int, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter gives attn_q / attn_k of llama models (its `permute`):
    within each head, the two rotary halves are interleaved. GGUF row r is HF row order[r]."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


@dataclass
class Tensor:
    """What goes into the file for one tensor: a ggml type and its bytes or values (rows, ...)."""
    type_id: int
    data: np.ndarray         # uint8 blocks (rows, row bytes) for quantized types, else float values
    shape: tuple             # numpy order (rows, cols)


def jlcm_tensor(qtype: pack.JLCMType, blocks: np.ndarray, rows: int, cols: int,
                row_order: np.ndarray | None = None) -> Tensor:
    b = np.asarray(blocks, dtype=np.uint8).reshape(rows, cols // pack.QK * qtype.type_size)
    if row_order is not None:
        b = b[row_order]
    return Tensor(qtype.type_id, np.ascontiguousarray(b), (rows, cols))


def data_free_tensor(type_name: str, values: np.ndarray) -> Tensor:
    """A tensor the learning does not see (embeddings, output head) in any type we can write: a stock
    type through gguf-py, a JLCM type through the C library's data-free reference quantizer."""
    if type_name in pack.TYPES:
        from . import kernels
        qtype = pack.TYPES[type_name]
        values = np.asarray(values, dtype=np.float32)
        return jlcm_tensor(qtype, kernels.quantize(qtype, values), *values.shape)
    return stock_tensor(type_name, values)


def stock_tensor(type_name: str, values: np.ndarray) -> Tensor:
    """A float tensor quantized with gguf-py to a stock type it can write (F32, F16, BF16, Q8_0, Q5_x, Q4_x)."""
    import gguf
    t = gguf.GGMLQuantizationType[type_name]
    values = np.asarray(values, dtype=np.float32)
    if t == gguf.GGMLQuantizationType.F32:
        return Tensor(int(t), values, values.shape)
    if t == gguf.GGMLQuantizationType.F16:
        return Tensor(int(t), values.astype(np.float16), values.shape)
    return Tensor(int(t), gguf.quants.quantize(values, t), values.shape)


def stock_values(type_name: str, values: np.ndarray) -> np.ndarray:
    """What a tensor written by stock_tensor decodes to."""
    import gguf
    t = gguf.GGMLQuantizationType[type_name]
    return gguf.quants.dequantize(stock_tensor(type_name, values).data, t).reshape(np.shape(values))


def file_size(reference: Path, replace: dict[str, int]) -> int:
    """Bytes of the file `write` makes from `reference` with the tensors in `replace` (name -> new byte
    count), up to metadata and alignment (a few KB)."""
    from .gguf_io import open_reader
    old = {t.name: int(t.n_bytes) for t in open_reader(reference).tensors}
    return reference.stat().st_size + sum(n - old[name] for name, n in replace.items())


def write(reference: Path, out: Path, replace: dict[str, Tensor], metadata: dict, file_type: int) -> None:
    """Copy `reference` (a GGUF by the pinned converter) to `out`, with the tensors in `replace` (by GGUF
    name) swapped in, `general.file_type` set and `metadata` (key -> str/int/float/list) added.
    The file is written beside `out` under a temporary name, fsynced, then renamed."""
    import gguf
    register_types()
    reader = open_reader(reference)
    unknown = set(replace) - {t.name for t in reader.tensors}
    if unknown:
        raise KeyError(f"tensors not in {reference.name}: {sorted(unknown)[:5]}")
    tmp = cache.atomic_path(out)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(tmp, arch, use_temp_file=False)
    try:
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = file_type if name == "general.file_type" else field.contents()
            writer.add_key_value(name, value, vtype, sub)
        if "general.file_type" not in reader.fields:
            writer.add_file_type(file_type)
        for key, value in metadata.items():
            _add(writer, key, value)
        for t in reader.tensors:
            new = replace.get(t.name)
            if new is None:
                data = np.asarray(t.data)
                writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
            else:
                want = tuple(int(x) for x in reversed(t.shape.tolist()))
                if tuple(new.shape) != want:
                    raise ValueError(f"{t.name}: shape {new.shape} where the reference has {want}")
                writer.add_tensor(t.name, new.data, raw_shape=new.data.shape,
                                  raw_dtype=gguf.GGMLQuantizationType(new.type_id))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.fout[0].flush()
        os.fsync(writer.fout[0].fileno())
        writer.close()
        cache.commit_file(tmp, out)
    except BaseException as e:
        writer.close()
        tmp.unlink(missing_ok=True)
        # a full disk shows up as an errno, as gguf-py's own free-space check (a bare OSError), or as
        # numpy's short write ("N requested and M written"): give all of them one errno
        full = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        if isinstance(e, OSError) and (e.errno in full or "free space" in str(e) or " written" in str(e)):
            raise OSError(errno.ENOSPC, "no space left on device", str(out)) from e
        raise


def _add(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"metadata {key}: cannot store {type(value).__name__}")
