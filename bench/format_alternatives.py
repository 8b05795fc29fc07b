#!/usr/bin/env python3
"""Block-format alternatives, measured as layer output error on real layers of the default model.

    python bench/format_alternatives.py [--layers 2,15,28] [--calib-seqs 16]

For each layer, H comes from float calibration activations (Emma etc.). Each
alternative is quantized by the same JLCM learner; the figure is the relative
output error L(W^)/tr(W H W^T) (lower is better) with the bits per weight
its block layout costs. Results: bench/results/format_alternatives.json.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from jlcm_gguf import assets, cache, calibrate, learn, pack, scoreboard

RESULTS = Path(__file__).resolve().parent / "results"
TENSORS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def int8_codebook_error(q: learn.JLCM, w, H) -> float:
    """The same learner with the codebook stored as int8 (entries in [-128, 127]): no int4 rounding."""
    s, C, groups, idx = q.init(w, H)
    if q.cfg.error_feedback:
        idx = q.error_feedback_assign(w, H, s, C, groups)
    s, C, idx, _ = q.learn(w, H, s, C, groups, idx)
    alpha = torch.maximum(C.max(1).values / 127, -C.min(1).values / 128)
    Cq = torch.round(C / alpha[:, None])
    s = s * alpha[groups].repeat_interleave(w.shape[1] // pack.QK)
    s = q.fit_continuous(w, H, s, Cq, groups, idx, q.cfg.adam_steps, codebook=False)[0].half().float()
    return float(q.loss(w, q.dequant(s, Cq, groups, idx), H) / q.loss(w, torch.zeros_like(w), H))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="2,15,28")
    p.add_argument("--calib-seqs", type=int, default=16)
    p.add_argument("--out", type=Path, default=RESULTS / "format_alternatives.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    text = "".join(assets.text_file(n).read_text(encoding="utf-8") for n in assets.CALIBRATION_NOVELS)
    stream = calibrate.LayerStream(hf)
    hidden = stream.embed(calibrate.calibration_tokens(tok, text, args.calib_seqs, 512, 0))
    want = sorted(int(x) for x in args.layers.split(","))
    rows = []
    for i in range(max(want) + 1):
        layer = stream.layer(i)
        if i in want:
            H = calibrate.collect_hessians(stream, layer, hidden)
            for name in TENSORS:
                w = layer.get_submodule(name).weight.data
                for qtype in (pack.JLCM2, pack.JLCM3):
                    q = learn.JLCM(qtype, learn.Settings())
                    alts = {
                        f"{qtype.name} int4 codebook, 16 groups": (qtype.bpw, q.quantize(w, H[name]).rel_error),
                        f"{qtype.name} int8 codebook, 16 groups": (qtype.bpw + 8 * qtype.n_codes / 2 / 64,
                                                                   int8_codebook_error(q, w, H[name])),
                        f"{qtype.name} int4 codebook, per-row groups": (
                            qtype.bpw, learn.JLCM(qtype, learn.Settings(n_groups=w.shape[0])).quantize(w, H[name]).rel_error),
                    }
                    for alt, (bpw, err) in alts.items():
                        rows.append({"layer": i, "tensor": name, "alternative": alt, "bpw": bpw, "rel_error": round(err, 6)})
                        print(rows[-1], flush=True)
        hidden = stream.run(layer, hidden)
    cache.write_json(args.out, {"model": assets.MODEL_NAME, "metric": "relative layer output error L(W^)/tr(W H W^T)",
                                "machine": scoreboard.machine_info(),
                                "commands": ["python bench/format_alternatives.py " + shlex.join(sys.argv[1:])],
                                "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
