"""Which type each tensor gets: --type, --tensor-type overrides, fallbacks, and --target-bpw mixes."""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import pack
from .gguf_write import gguf_name
from .calibrate import LINEARS

STOCK_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")   # what gguf-py can write
FALLBACK_TYPE = "Q8_0"        # linears whose rows are not a multiple of 64 wide

# KLD of the default model with JLCM2 on one tensor class and float elsewhere
# (bench/results/sensitivity.json, 15 chunks): what a class costs at 2 bits.
CLASS_DAMAGE = {"mlp.gate_proj": 0.89 / 2, "mlp.up_proj": 0.89 / 2, "mlp.down_proj": 0.41,
                "self_attn.v_proj": 0.26, "self_attn.q_proj": 0.20 / 2, "self_attn.k_proj": 0.20 / 2,
                "self_attn.o_proj": 0.08}


class PolicyError(ValueError):
    pass


def check_type(name: str, flag: str, allow_jlcm: bool = True) -> str:
    allowed = (list(pack.TYPES) if allow_jlcm else []) + list(STOCK_TYPES)
    if name.upper() not in allowed:
        raise PolicyError(f"{flag}: unknown type {name!r} (one of {', '.join(allowed)})")
    return name.upper()


def type_bits(type_name: str) -> float:
    if type_name in pack.TYPES:
        return pack.TYPES[type_name].bpw
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8 * size / block


@dataclass
class Linear:
    hf_name: str
    gguf_name: str
    layer: int
    lin: str          # "mlp.down_proj", ...
    rows: int
    cols: int

    @property
    def n(self) -> int:
        return self.rows * self.cols


def linears(config: dict) -> list[Linear]:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    h, f, q = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"] * head_dim
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    return [Linear(f"model.layers.{i}.{lin}.weight", gguf_name(f"model.layers.{i}.{lin}.weight"), i, lin, *shapes[lin])
            for i in range(config["num_hidden_layers"]) for lin in LINEARS]


def apply_overrides(base: str, gguf_name: str, overrides: list[tuple[str, str]]) -> str:
    for pattern, type_name in overrides:
        if re.search(pattern, gguf_name):
            base = type_name
    return base


def with_fallback(type_name: str, cols: int) -> str:
    return FALLBACK_TYPE if type_name in pack.TYPES and cols % pack.QK else type_name


def plan(config: dict, qtype: str, overrides: list[tuple[str, str]]) -> dict[str, str]:
    """HF linear name -> type: --type, then the last matching --tensor-type, then the fallback."""
    return {L.hf_name: with_fallback(apply_overrides(qtype, L.gguf_name, overrides), L.cols) for L in linears(config)}


def target_mix(config: dict, target_bpw: float, fixed_bytes: int, n_total: int,
               overrides: list[tuple[str, str]], tolerance: float = 0.05) -> dict[str, str]:
    """A JLCM2/JLCM3 mix whose whole file lands within `tolerance` of target_bpw.

    fixed_bytes: every byte that is not a linear layer (metadata, tokenizer, embeddings, norms);
    n_total: every weight of the file. Linears start at JLCM2 and are raised to JLCM3 in order of
    measured damage per weight (CLASS_DAMAGE), earlier layers first within a class, until the file
    reaches the target; --tensor-type overrides are kept as given."""
    ls = linears(config)
    types = {L.hf_name: with_fallback(apply_overrides("JLCM2", L.gguf_name, overrides), L.cols) for L in ls}
    pinned = {L.hf_name for L in ls if apply_overrides("", L.gguf_name, overrides)}

    def file_bpw():
        return 8 * (fixed_bytes + sum(L.n * type_bits(types[L.hf_name]) / 8 for L in ls)) / n_total

    lo = file_bpw()
    if lo > target_bpw + tolerance:
        raise PolicyError(f"--target-bpw {target_bpw}: the smallest file is {lo:.3f} bpw (all linears JLCM2, the rest "
                          "as set); choose a higher target or a smaller --token-embedding-type")
    order = sorted((L for L in ls if L.hf_name not in pinned and types[L.hf_name] == "JLCM2"),
                   key=lambda L: (-CLASS_DAMAGE[L.lin] / (L.n * config["num_hidden_layers"]), L.layer))
    for L in order:
        if file_bpw() >= target_bpw - tolerance:
            break
        types[L.hf_name] = "JLCM3"
        if file_bpw() > target_bpw + tolerance:
            types[L.hf_name] = "JLCM2"
    if abs(file_bpw() - target_bpw) > tolerance:
        raise PolicyError(f"--target-bpw {target_bpw}: JLCM2/JLCM3 mixes span {lo:.3f} to {file_bpw():.3f} bpw "
                          "for this file; choose a target in that range")
    return types
