#!/usr/bin/env python3
"""Speed through ggml's repack path: Q4_0, JLCM2 and JLCM3 files of the default model in one llama-bench
run, each with the repack path on and off (`--repack 1,0`).

    python bench/repack.py [--reps 3] [--out bench/results/repack.json]

On x86 with AVX2, llama.cpp interleaves Q4_0 rows eight at a time at load and multiplies eight rows per
pass; patch 0006 does the same for JLCM2 and JLCM3 (csrc's gemv_jlcm{2,3}x8_q8_0). This measures what
that is worth and where the JLCM files stand against Q4_0 with and without it.

The files come from llama-quantize (token_embd Q8_0 in all three, as in `jlcm-gguf convert`'s files):
its JLCM2/JLCM3 are the data-free per-block codebooks, with the tensor types and shapes of the learned
files, so the same speed (their quality is not what this measures: see scoreboard.json). Like the
scoreboard, two llama-bench runs, the second in reverse file order, each figure the mean of the two.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jlcm_gguf import assets, cache, llama_cpp, scoreboard  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TYPES = ("Q4_0", "JLCM2", "JLCM3")


def make_files(runner: scoreboard.Runner, f16: Path, work: Path) -> dict[str, Path]:
    files = {}
    for t in TYPES:   # the digest covers jlcm-ref.c, llama-quantize's JLCM quantizer and block layout
        out = work / f"{f16.stem}-{t}-embd-q8_0-{scoreboard.source_digest()}.gguf"
        if not out.exists():
            tmp = cache.atomic_path(out)
            runner.run("llama-quantize", ["--token-embedding-type", "q8_0", f16, tmp, t, 2])
            os.replace(tmp, out)
        files[t] = out
    return files


def bench_pass(runner: scoreboard.Runner, files: list[Path], reps: int) -> dict[tuple[str, bool], dict]:
    args = [a for f in files for a in ("-m", f)]
    out = runner.run("llama-bench", args + ["-p", 512, "-n", 128, "-t", 2, "-r", reps, "--repack", "1,0", "-o", "json"])
    result: dict[tuple[str, bool], dict] = {}
    for r in json.loads(out[out.index("["):out.rindex("]") + 1]):
        key = "pp512" if r["n_gen"] == 0 else "tg128"
        result.setdefault((Path(r["model_filename"]).name, r["repack"]), {})[key] = r["avg_ts"]
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "repack.json")
    args = p.parse_args()
    runner = scoreboard.Runner(llama_cpp.build(quiet=True))
    work = cache.cache_dir() / "bench" / "repack"
    work.mkdir(parents=True, exist_ok=True)
    files = make_files(runner, assets.f16_reference(), work)
    order = [files[t] for t in TYPES]
    passes = [bench_pass(runner, o, args.reps) for o in (order, order[::-1])]
    rows = []
    for t in TYPES:
        for repack in (True, False):
            key = (files[t].name, repack)
            row = {"type": t, "repack": repack, "file": files[t].name, "file_bytes": files[t].stat().st_size}
            for m in ("pp512", "tg128"):
                runs = [ps[key][m] for ps in passes]
                row[m] = round(sum(runs) / len(runs), 2)
                row[f"{m}_runs"] = [round(x, 2) for x in runs]       # forward, reversed
            rows.append(row)
    base = next(r for r in rows if r["type"] == "Q4_0" and r["repack"])
    for r in rows:
        r["tg128_vs_Q4_0"] = round(r["tg128"] / base["tg128"], 3)   # Q4_0 as llama.cpp runs it (repacked)
        r["pp512_vs_Q4_0"] = round(r["pp512"] / base["pp512"], 3)
    doc = {"machine": scoreboard.machine_info(),
           "commands": ["python bench/repack.py " + shlex.join(sys.argv[1:])] + runner.commands,
           "llama_cpp": llama_cpp.LLAMA_CPP_COMMIT, "threads": 2, "rows": rows,
           "note": "ratios against Q4_0 with repack on (llama.cpp's default); each figure the mean of two "
                   "llama-bench runs (file order forward, then reversed), runs kept beside it"}
    cache.write_json(args.out, doc)
    for r in rows:
        print(f"{r['type']:6s} repack={int(r['repack'])}  pp512 {r['pp512']:8.2f}  tg128 {r['tg128']:7.2f}  "
              f"tg128 vs Q4_0 {r['tg128_vs_Q4_0']:.3f}  pp512 vs Q4_0 {r['pp512_vs_Q4_0']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
