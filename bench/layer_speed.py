#!/usr/bin/env python3
"""Layer-wise stage time of two versions of the quantizer, side by side on this machine.

    python bench/layer_speed.py [--base 0410ca0] [--layers 3] [--out bench/results/layer_speed.json]

Quantizes the first --layers decoder layers of the default model to JLCM2 with the default
settings and 64 x 512 calibration tokens (no distillation), once with the working tree's code and
once with --base's (checked out into a temporary worktree that borrows this build's cffi module),
alternating, twice each; reports seconds per layer and whether the two give the same codes.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jlcm_gguf import scoreboard  # noqa: E402

JOB = r"""
import hashlib, json, sys, time, torch
from jlcm_gguf import assets, pack, quantize
from jlcm_gguf.distill import DistillSettings
torch.set_num_threads(2)
text = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
plan = quantize.uniform(pack.JLCM2)
plan.distill = DistillSettings(epochs=0)
t = time.time()
q = quantize.quantize_model(assets.hf_model_dir(), text, plan, n_seqs=64, seq_len=512, n_layers=int(sys.argv[1]),
                            quiet=True)
h = hashlib.sha256(b"".join(r.blocks.tobytes() for r in q.linears.values())).hexdigest()
print(json.dumps({"seconds": time.time() - t, "layers": q.seconds["layers"], "sha256": h,
                  "rel_error": sum(r.rel_error for r in q.linears.values()) / len(q.linears)}))
"""


def run(tree: Path, layers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", JOB, str(layers)], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="0410ca0", help="the git revision to compare with (default: before the C walks)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "layer_speed.json")
    args = p.parse_args()
    so = next((ROOT / "jlcm_gguf").glob("_kernels*.so"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True,
                       capture_output=True)
        try:
            shutil.copy(so, base / "jlcm_gguf" / so.name)     # a superset of the symbols the base calls
            runs = {"base": [], "head": []}
            for _ in range(2):
                for name, tree in (("base", base), ("head", ROOT)):
                    runs[name].append(run(tree, args.layers))
                    print(name, runs[name][-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    head_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    best = {k: min(r["layers"] for r in v) for k, v in runs.items()}
    doc = {"machine": scoreboard.machine_info(), "commands": ["python bench/layer_speed.py " + shlex.join(sys.argv[1:])],
           "base": args.base, "head": head_rev + (" + working tree" if subprocess.run(
               ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD"]).returncode else ""),
           "layers": args.layers, "runs": runs,
           "seconds_per_layer": {k: round(v / args.layers, 2) for k, v in best.items()},
           "speedup": round(best["base"] / best["head"], 2)}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("seconds_per_layer", "speedup")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
