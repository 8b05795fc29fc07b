#!/usr/bin/env python3
"""Memory of the layer-wise stage, layer by layer: anonymous RSS sampled every second.

    python bench/layer_memory.py MODEL_DIR [--layers 1] [--type JLCM2] [--chunk-floats N] [--trim]

Runs quantize_model on the first --layers decoder layers of an HF model (no distillation, one
512-token calibration window, no sweeps or outer steps: bench/llama7b.py's CPU conversion), and
records the anonymous RSS at each layer's start and its peak over the run. --chunk-floats sets
learn.CHUNK_FLOATS (the index step's row chunks; 2**40 puts every tensor in one chunk, which holds
about what the step held before it was chunked). --trim returns freed heap to the system
(malloc_trim) before each layer. A row goes to bench/results/layer_memory.json.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jlcm_gguf import assets, calibrate, distill, learn, pack, quantize, scoreboard  # noqa: E402

RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))
from rss_split import status  # noqa: E402


def anon_gib() -> float:
    return status(os.getpid())["RssAnon"] / 2 ** 30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--type", default="JLCM2", choices=sorted(pack.TYPES))
    p.add_argument("--chunk-floats", type=int, default=learn.CHUNK_FLOATS)
    p.add_argument("--trim", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "layer_memory.json")
    args = p.parse_args()
    learn.CHUNK_FLOATS = args.chunk_floats
    libc = ctypes.CDLL("libc.so.6") if args.trim else None

    samples, stop, t0 = [], threading.Event(), time.time()

    def sample():
        while not stop.is_set():
            samples.append(anon_gib())
            time.sleep(1)
    threading.Thread(target=sample, daemon=True).start()

    starts = []
    build = calibrate.LayerStream.layer

    def layer(self, i):
        if libc is not None:
            libc.malloc_trim(0)
        starts.append({"layer": i, "seconds": round(time.time() - t0, 1), "anon_gib": round(anon_gib(), 3),
                       "peak_so_far_gib": round(max(samples, default=0.0), 3)})
        print(starts[-1], flush=True)
        return build(self, i)
    calibrate.LayerStream.layer = layer

    text = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    plan = quantize.Plan(lambda i, n: pack.TYPES[args.type], learn.Settings(outer_steps=0, sweeps=0),
                         distill.DistillSettings(epochs=0))
    q = quantize.quantize_model(args.model, text, plan, n_seqs=1, seq_len=512, seed=0, quiet=True,
                                n_layers=args.layers)
    time.sleep(2)
    stop.set()
    row = {"name": f"{args.model.name} {args.type}, {args.layers} layer(s), chunk_floats {args.chunk_floats}"
                   + (", malloc_trim" if args.trim else ""),
           "type": args.type, "layers": args.layers, "chunk_floats": args.chunk_floats, "trim": args.trim,
           "layer_starts": starts, "end_anon_gib": round(anon_gib(), 3), "peak_anon_gib": round(max(samples), 3),
           "seconds": round(time.time() - t0, 1),
           "blocks_gib": round(sum(r.blocks.nbytes for r in q.linears.values()) / 2 ** 30, 3)}
    print(row, flush=True)
    header = {"what": __doc__.split("\n")[0], "machine": scoreboard.machine_info(),
              "commands": ["python bench/layer_memory.py " + shlex.join(sys.argv[1:])]}
    scoreboard.merge_rows(args.out, header, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
