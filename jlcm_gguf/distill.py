"""End-to-end distillation of what the file keeps in float: block scales and RMSNorm gains.

After the layer-wise learning, codebooks and indices are fixed integers. Two
kinds of parameter are still free and cost no extra bits: each block's fp16
scale d, and the RMSNorm gains (F32 tensors in the GGUF). Layer by layer, the
learner could only see its own layer's output error; here they follow the
model's real objective, the KL divergence from the float model's next-token
distribution, over the calibration sequences:

    min over m, g   sum_t KL( p_float(. | x_<t) || p_quant(. | x_<t; d * m, g) )

with one multiplier m per block (parameterized as exp(log m), starting at 1)
and g the norm gains. The float model's distribution comes from its final
hidden states, captured while calibrating (`quantize.quantize_model`), so no
second model is held. This stage holds the model in float (for the default
model, 0.5 GB); `--distill-epochs 0` skips it for models that do not fit.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from tqdm import tqdm

from . import pack


@dataclass
class DistillSettings:
    epochs: int = 1         # more data beats more epochs: docs/METHOD.md
    lr: float = 3e-3
    batch: int = 1          # sequences a step (activations of the whole model are kept for backward)
    seqs: int = 128         # windows to distil on: the calibration's and more (0: the calibration's alone)
    bf16: bool | None = None    # the forward and backward matmuls in bfloat16 (torch autocast; parameters, Adam
                                # and the softmaxes stay float32); None: where the device has bfloat16 arithmetic

    def uses_bf16(self, device) -> bool:
        return native_bf16(device) if self.bf16 is None else self.bf16


def native_bf16(device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or an x86 CPU with
    AVX512-BF16 or AMX (Linux's CPU flags). Elsewhere torch converts to float32 and back, slower than
    float32 alone, so the distillation stays in float32 there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


class BlockScale(torch.nn.Module):
    """w -> w * m, one multiplier per 64-weight block (row-major, the blocks' order in the file)."""

    def __init__(self, rows: int, cols: int):
        super().__init__()
        self.log_m = torch.nn.Parameter(torch.zeros(rows, cols // pack.QK))

    def forward(self, w):
        rows, cols = w.shape      # broadcast, not repeat: no weight-sized multiplier is kept for backward
        return (w.view(rows, cols // pack.QK, pack.QK) * self.log_m.exp().unsqueeze(-1)).view(rows, cols)


def kl_to_teacher(teacher_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), both (..., vocab)."""
    logp = F.log_softmax(logits.float(), -1)
    return (teacher_logp.exp() * (teacher_logp - logp)).sum(-1).mean()


def _chunk_kl_sum(head, teacher_norm, h, h_teacher):
    with torch.no_grad():
        teacher = F.log_softmax(head(teacher_norm(h_teacher)).float(), -1)
    logp = F.log_softmax(head(h).float(), -1)
    return (teacher.exp() * (teacher - logp)).sum()


def head_kl(model, teacher_norm, normed, teacher_hidden, chunk: int = 128) -> torch.Tensor:
    """kl_to_teacher of the output head, a chunk of positions at a time: the vocabulary-wide tensors
    (49152 wide for the default model) are rebuilt in backward instead of kept.
    normed: the model's final hidden states after its final norm; teacher_hidden: before it."""
    from torch.utils.checkpoint import checkpoint
    h = normed.flatten(0, -2)
    ht = teacher_hidden.flatten(0, -2)
    total = sum(checkpoint(_chunk_kl_sum, model.lm_head, teacher_norm, h[a:a + chunk], ht[a:a + chunk],
                           use_reentrant=False) for a in range(0, h.shape[0], chunk))
    return total / h.shape[0]


def distill(model, quantized: dict, tokens: torch.Tensor, teacher_hidden: torch.Tensor,
            settings: DistillSettings, quiet: bool = False,
            extra: tuple[dict, ...] = (), after_step=None,
            extra_loss=None) -> tuple[dict[str, np.ndarray], dict, list[float]]:
    """Fit block multipliers and norm gains of `model`, whose linears named in `quantized`
    (HF name -> (JLCMType, blocks)) already hold their dequantized weights.

    teacher_hidden: the float model's final hidden states (before the final norm) for `tokens`.
    extra: more Adam parameter groups to fit alongside (bench/distill_variants.py's biases); the caller
    reads them back from its own tensors.
    after_step: called as after_step(model, steps taken) after each step (bench/index_moves.py); it may
    change the codes of `quantized`, which the returned blocks then hold.
    extra_loss: called as extra_loss(tokens of the step) after the model's forward, its value added to
    the KL (bench/distill_variants.py's hidden-state term).
    Returns (re-scaled blocks by name, tuned norm gains by HF name, mean loss per epoch)."""
    teacher_norm = copy.deepcopy(model.model.norm)
    for p in model.parameters():
        p.requires_grad_(False)
    scales = {}
    for name in quantized:
        lin = model.get_submodule(name.removesuffix(".weight"))
        parametrize.register_parametrization(lin, "weight", BlockScale(*lin.weight.shape).to(lin.weight.device))
        scales[name] = lin.parametrizations.weight[0].log_m
    norms = {n: p for n, p in model.named_parameters() if n.endswith("norm.weight")}
    for p in norms.values():
        p.requires_grad_(True)
    for group in extra:
        for p in group["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [*scales.values(), *norms.values()]}, *extra], lr=settings.lr)
    steps = range(0, tokens.shape[0], settings.batch)
    # cosine decay to zero: large moves first, then settle on the fp16 grid's neighbourhood
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / (settings.epochs * len(steps)))))
    history = []
    bf16 = settings.uses_bf16(tokens.device)
    model.train()
    for epoch in range(settings.epochs):
        total = 0.0
        for b in tqdm(steps, desc=f"distilling {epoch + 1}/{settings.epochs}", unit="step", leave=False, disable=quiet):
            with torch.autocast(tokens.device.type, torch.bfloat16, enabled=bf16):
                normed = model.model(tokens[b:b + settings.batch]).last_hidden_state     # after the final norm
                loss = head_kl(model, teacher_norm, normed, teacher_hidden[b:b + settings.batch])
                if extra_loss is not None:
                    loss = loss + extra_loss(tokens[b:b + settings.batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if after_step is not None:
                after_step(model, epoch * len(steps) + b // settings.batch + 1)
        history.append(total / len(steps))
    model.eval()
    blocks = {}
    for name, log_m in scales.items():
        qtype, old = quantized[name]
        d, cb, idx = pack.unpack(qtype, old)
        d = (d.astype(np.float32) * log_m.detach().exp().reshape(-1).cpu().numpy()).clip(-65504, 65504)
        blocks[name] = pack.pack(qtype, d.astype(np.float16), cb, idx)
        lin = model.get_submodule(name.removesuffix(".weight"))
        parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
        lin.weight.data.copy_(torch.from_numpy(pack.dequantize(qtype, blocks[name])).view_as(lin.weight))
    for p in model.parameters():
        p.requires_grad_(False)
    return blocks, {n: p.detach().clone() for n, p in norms.items()}, history
