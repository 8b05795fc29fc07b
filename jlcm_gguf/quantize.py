"""Quantize a model: layer by layer (calibrate, learn each linear's JLCM codes, feed the result
forward), then distil the block scales and norm gains end to end against the float model."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import pack
from .calibrate import (LINEARS, SHARED_INPUTS, LayerStream, calibration_windows, collect_cross_moments, collect_hessians,
                        output_energy, token_weights)
from .distill import DistillSettings, distill
from .learn import JLCM, Result, Settings, float_target


@dataclass
class Plan:
    """Which JLCM type each linear gets (None: the caller stores it as another type).

    held(hf_name, w) gives the weight the file will hold for a linear that is not JLCM (a stock type's
    dequantized values); the later layers' calibration inputs and the distillation then run through the
    model the file holds, not through float weights it never contains. None keeps those linears float."""
    choose: Callable[[int, str], pack.JLCMType | None]
    settings: Settings = field(default_factory=Settings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    held: Callable[[str, torch.Tensor], torch.Tensor] | None = None

    def hold(self, layer: torch.nn.Module, i: int) -> None:
        """Put held weights into decoder layer i's linears that are not JLCM."""
        if self.held is None:
            return
        with torch.no_grad():
            for name in LINEARS:
                if self.choose(i, name) is None:
                    lin = layer.get_submodule(name)
                    lin.weight.copy_(self.held(f"model.layers.{i}.{name}.weight", lin.weight.data).to(lin.weight))


def uniform(qtype: pack.JLCMType, settings: Settings | None = None) -> Plan:
    return Plan(lambda layer, name: qtype, settings or Settings())


@dataclass
class Quantized:
    linears: dict[str, Result]          # by HF tensor name (model.layers.N.self_attn.q_proj.weight, ...)
    norms: dict[str, torch.Tensor]      # norm gains the distillation changed, by HF name (empty without it)
    distill_history: list[float]        # mean KL per distillation epoch
    seconds: dict[str, float]           # wall time of each stage


def quantize_model(hf_dir: Path, calib_text: str, plan: Plan, n_seqs: int = 32, seq_len: int = 512,
                   seed: int = 0, device: str = "cpu", quiet: bool = False,
                   n_layers: int | None = None) -> Quantized:
    """n_layers quantizes only the first n decoder layers (a quick look, or a test); the rest stay float."""
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    stream = LayerStream(hf_dir, device)
    teach = plan.distill.epochs > 0
    n_more = max(0, plan.distill.seqs - n_seqs) if teach else 0
    # the distillation's windows, in text order; `calib` picks the layer-wise calibration's among them
    windows, calib = calibration_windows(tok, calib_text, n_seqs, seq_len, seed, n_more)
    on_calib = (lambda x: x[calib]) if n_more else (lambda x: x)
    tokens = on_calib(windows)
    weights = None
    if plan.settings.guide > 0:
        # before the layer loop: the float model is needed whole, once, then dropped
        energy = output_energy(_float_model(hf_dir, device), tokens.to(device), seq_len // 2, quiet)
        weights = token_weights(energy, plan.settings.guide)
    hidden = stream.embed(tokens)
    to_float = plan.settings.target == "float"
    # the float model's path over every window: the distillation's target, and the layer-wise target with
    # target="float" on the calibration's windows
    float_hidden = stream.embed(windows) if teach or to_float else None
    last = min(stream.n_layers, n_layers or stream.n_layers)
    results: dict[str, Result] = {}
    bar = tqdm(range(stream.n_layers if teach else last), desc="quantizing", unit="layer", disable=quiet)
    for i in bar:
        layer = stream.layer(i)
        chosen = {name: plan.choose(i, name) for name in LINEARS} if i < last else {}
        hess, cross = {}, {}
        if any(chosen.values()) and to_float:
            hess, cross, out = collect_cross_moments(stream, layer, on_calib(float_hidden), hidden)
            float_hidden = stream.run(layer, float_hidden) if n_more else out
        elif float_hidden is not None:
            float_hidden = stream.run(layer, float_hidden)
        if i < last:
            plan.hold(layer, i)
        measure = lambda: collect_hessians(stream, layer, hidden, gram=True,     # noqa: E731
                                           weights=None if weights is None else {n: weights[(i, n)] for n in LINEARS})
        if any(chosen.values()) and not cross:
            hess = measure()    # after hold(): the inputs come through the weights the file holds
        hess, cross = _on_device(hess, cross, device=device)
        for name, qtype in chosen.items():
            if qtype is None:
                continue
            if plan.settings.sequential and not cross and name in SHARED_INPUTS and name != LINEARS[0]:
                hess, = _on_device(measure(), device=device)    # after linears of this layer took their codes
            lin = layer.get_submodule(name)
            bar.set_postfix_str(f"{name.split('.')[-1]} {qtype.name}")
            w = lin.weight.data.to(device).float()
            if cross:
                w = float_target(w, hess[name], cross[name])
            res = JLCM(qtype, plan.settings).quantize(w, hess[name])
            lin.weight.data.copy_(res.weight.to(lin.weight.dtype))
            res.dequantized = None      # the layer has it; the blocks alone stay (they decode to it)
            results[f"model.layers.{i}.{name}.weight"] = res
        hidden = on_calib(float_hidden) if i >= last else stream.run(layer, hidden)
        del layer, hess, cross
    seconds = {"layers": time.time() - t0}
    if not teach or not results:
        return Quantized(results, {}, [], seconds)
    t1 = time.time()
    model = _float_model(hf_dir, device)
    for i in range(last):
        plan.hold(model.model.layers[i], i)
    with torch.no_grad():
        for name, res in results.items():
            model.get_submodule(name.removesuffix(".weight")).weight.copy_(res.weight)
    quantized = {name: (res.qtype, res.blocks) for name, res in results.items()}
    blocks, norms, history = distill(model, quantized, windows.to(device), float_hidden, plan.distill, quiet)
    for name, res in results.items():
        res.blocks = blocks[name]
        res.dequantized = model.get_submodule(name.removesuffix(".weight")).weight.detach().cpu()
    seconds["distill"] = time.time() - t1
    return Quantized(results, norms, history, seconds)


def _on_device(*dicts: dict, device: str) -> tuple[dict, ...]:
    """Each dict's values moved to `device`, a value shared by several names (q/k/v, gate/up) moved once."""
    moved = {id(h): h.to(device) for d in dicts for h in d.values()}
    return tuple({n: moved[id(h)] for n, h in d.items()} for d in dicts)


def _float_model(hf_dir: Path, device: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
