#!/usr/bin/env python3
"""The scoreboard: stock llama.cpp types and JLCM files on the default model, measured by the real tools.

    python bench/scoreboard.py [--types F16,Q4_0,...] [--jlcm JLCM2,JLCM3,...] [--chunks 60] [--ctx 512]

The same command as `jlcm-gguf bench` (jlcm_gguf/scoreboard.py), writing to
bench/results/ of this checkout: scoreboard.json (rows merged by name),
scoreboard.png (KLD against bits per weight, log scale, stock and JLCM as
two curves) and scoreboard.md (the table the README shows). Every file of a
run goes through one llama-bench run, so the speeds compare side by side.
"""
import sys
from pathlib import Path

from jlcm_gguf.cli import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(RESULTS / "scoreboard.json")]
    sys.exit(main(["bench", *argv]))
