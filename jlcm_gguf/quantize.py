"""Quantize a model layer by layer: calibrate, learn each linear's JLCM codes, feed the result forward."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import pack
from .calibrate import LINEARS, LayerStream, calibration_tokens, collect_hessians
from .learn import JLCM, Result, Settings


@dataclass
class Plan:
    """Which JLCM type each linear gets (None keeps it float for the caller to store as it likes)."""
    choose: Callable[[int, str], pack.JLCMType | None]
    settings: Settings = field(default_factory=Settings)


def uniform(qtype: pack.JLCMType, settings: Settings | None = None) -> Plan:
    return Plan(lambda layer, name: qtype, settings or Settings())


def quantize_model(hf_dir: Path, calib_text: str, plan: Plan, n_seqs: int = 32, seq_len: int = 512,
                   seed: int = 0, device: str = "cpu", quiet: bool = False,
                   n_layers: int | None = None) -> dict[str, Result]:
    """Results keyed by HF tensor name (model.layers.N.self_attn.q_proj.weight, ...).

    n_layers stops after the first n decoder layers (a quick look, or a test)."""
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    stream = LayerStream(hf_dir, device)
    tokens = calibration_tokens(tok, calib_text, n_seqs, seq_len, seed)
    hidden = stream.embed(tokens)
    results: dict[str, Result] = {}
    bar = tqdm(range(min(stream.n_layers, n_layers or stream.n_layers)), desc="quantizing", unit="layer", disable=quiet)
    for i in bar:
        layer = stream.layer(i)
        hess = collect_hessians(stream, layer, hidden)
        for name in LINEARS:
            qtype = plan.choose(i, name)
            if qtype is None:
                continue
            lin = layer.get_submodule(name)
            bar.set_postfix_str(f"{name.split('.')[-1]} {qtype.name}")
            res = JLCM(qtype, plan.settings).quantize(lin.weight.data.to(device), hess[name].to(device))
            lin.weight.data.copy_(res.weight.to(lin.weight.dtype))
            results[f"model.layers.{i}.{name}.weight"] = res
        hidden = stream.run(layer, hidden)   # the next layer sees this layer's quantized output
        del layer, hess
    return results


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
