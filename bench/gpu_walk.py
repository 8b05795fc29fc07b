#!/usr/bin/env python3
"""The error feedback's column walk on a GPU: eager torch against the Triton kernel, in one run.

    python bench/gpu_walk.py [--out FILE]

For each linear shape of Llama-2-7B (random weights, a factored Gram of 512 random tokens whose
columns differ in scale, as real activations do) it times `JLCM.error_feedback_assign` with the
eager column loop and with feedback_triton's kernel, checks that the two choose (nearly) the same
indices with the same output error, and times a whole `JLCM.quantize` (no learning rounds, as
bench/llama7b.py converts) with the kernel. Needs a CUDA device and Triton.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from jlcm_gguf import pack, scoreboard
from jlcm_gguf.calibrate import Gram
from jlcm_gguf.learn import JLCM, Settings

SHAPES = {"q/k/v/o": (4096, 4096), "gate/up": (11008, 4096), "down": (4096, 11008)}


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def one_shape(rows: int, cols: int, qtype: pack.JLCMType) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(512, cols, device="cuda", generator=g) * torch.rand(cols, device="cuda", generator=g).pow(3) * 4
    w = torch.randn(rows, cols, device="cuda", generator=g) * 0.02
    H = Gram.of(x)
    q = JLCM(qtype, Settings(outer_steps=0, sweeps=0))
    s, C, groups, _ = q.init(w, H)
    q.error_feedback_assign(w[:64], H, s[: 64 * (cols // 64)], C[:64], groups[:64])     # compile the kernel
    eager, t_eager = timed(lambda: q.error_feedback_assign(w, H, s, C, groups, gpu_walk=False))
    walked, t_walk = timed(lambda: q.error_feedback_assign(w, H, s, C, groups, gpu_walk=True))
    norm = q.loss(w, torch.zeros_like(w), H)
    err = [float(q.loss(w, q.dequant(s, C, groups, i), H) / norm) for i in (eager, walked)]
    res, t_quant = timed(lambda: q.quantize(w, H))
    return {"rows": rows, "cols": cols, "type": qtype.name, "eager_s": round(t_eager, 3),
            "triton_s": round(t_walk, 3), "speedup": round(t_eager / t_walk, 1),
            "same_index_fraction": float((eager == walked).float().mean()),
            "rel_error_eager": err[0], "rel_error_triton": err[1],
            "quantize_s_triton": round(t_quant, 2), "quantize_rel_error": res.rel_error}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_walk.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 1
    doc = {"machine": {**scoreboard.machine_info(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__},
           "commands": ["python bench/gpu_walk.py " + shlex.join(sys.argv[1:])], "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, (r, c) in SHAPES.items():
        for qtype in (pack.JLCM2, pack.JLCM3):
            doc["rows"].append({"tensor": name, **one_shape(r, c, qtype)})
            print(json.dumps(doc["rows"][-1]), flush=True)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")     # after each row: a lent machine's limit may cut the run
    return 0


if __name__ == "__main__":
    sys.exit(main())
