#!/usr/bin/env python3
"""Layer-wise objectives weighted by the end loss: each token's input to a linear counts by how much
the float model's next-token loss depends on that linear's output at that token.

    python bench/guided.py [--type JLCM2] [--runs "mix=0.5;mix=1"]

The plain layer-wise loss weighs every calibration token alike: H = X^T X / n.
Here, as GuidedQuant does with one group of output rows, each linear gets its own

    H = sum_t w_t x_t x_t^T / n,   w_t = (1 - mix) + mix * e_t / mean(e),   e_t = |dL/dy_t|^2

with y_t the linear's output at token t and L the float model's cross-entropy on
the second half of each calibration sequence, as the evaluation scores it (a
window's first tokens, with no context, would otherwise hold most of the
gradient): `--guide MIX` (Settings.guide, calibrate.output_energy). q, k and v (gate and up) share an
input but not their output gradients, so each gets its own H. Everything else is
the default quantization of bench/quantizer.py's JLCM rows (64 calibration
sequences, sweeps, distillation), evaluated the same way; compare with that
file's row of the same type (mix=0). The first run was measured by this script's
first version, which patched the same computation in from here; the library's
version gives identical energies and H (checked on layer 0).

Results: bench/results/guided.json.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import torch

from jlcm_gguf import assets, distill, evaluate, pack, quantize, scoreboard
from jlcm_gguf.learn import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_variants as dv  # noqa: E402  (the variant scripts' options and run specs)
import quantizer as qbench  # noqa: E402  (the JLCM rows' evaluation, reused)

RESULTS = Path(__file__).resolve().parent / "results"


def parse_run(spec: str) -> dict:
    return dv.parse_spec(spec, {"mix": 0.5})


def main() -> int:
    args = dv.variant_parser(__doc__, "mix=0.5;mix=1", RESULTS / "guided.json").parse_args()
    torch.set_num_threads(2)

    hf = assets.hf_model_dir()
    data, ref = qbench.eval_setup(args.chunks)
    calib = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    qtype = pack.TYPES[args.type]
    header = {"what": __doc__.split("\n")[0], "model": assets.MODEL_NAME, "machine": scoreboard.machine_info(),
              "eval": {"text": data.text, "ctx": 512, "chunks": args.chunks},
              "baseline": "bench/results/quantizer.json, the row of the same type (the same run with plain H)",
              "commands": ["python bench/guided.py " + shlex.join(sys.argv[1:])]}
    for spec in args.runs.split(";"):
        run = parse_run(spec)
        plan = quantize.Plan(lambda i, n: qtype, Settings(guide=run["mix"]), distill.DistillSettings(seqs=0, bf16=False))   # as measured
        t0 = time.time()
        q = quantize.quantize_model(hf, calib, plan, n_seqs=args.calib_seqs, seed=Settings().seed)
        seconds = time.time() - t0
        m = qbench.rest_model({**{k: r.weight for k, r in q.linears.items()}, **q.norms})
        row = {"name": f"{args.type} {spec}", "type": args.type, "calib_seqs": args.calib_seqs, **run,
               "quantize_seconds": round(seconds, 1),
               "stages": q.seconds, "distill_kl": q.distill_history, **evaluate.evaluate(m, data, ref)}
        print(row, flush=True)
        scoreboard.merge_rows(args.out, header, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
