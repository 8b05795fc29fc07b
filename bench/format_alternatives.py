#!/usr/bin/env python3
"""Block-format alternatives, measured as layer output error on real layers of the default model.

    python bench/format_alternatives.py [--layers 1,11] [--calib-seqs 16]

For each layer, H comes from float calibration activations (the calibration
novels). Each alternative is quantized by the same JLCM learner; the figure is
the relative output error L(W^)/tr(W H W^T) (lower is better) next to the bits
per weight its block layout costs. Alternatives:

- codebook entries int4 (the formats) or int8 (2 or 4 more bytes a block);
- the int grid chosen per block (the formats) or per group codebook;
- 16 groups (default) or one group per row;
- for reference, stock llama.cpp's own ffn_down from the IQ2_M file (imatrix):
  IQ2_S (2.5625 bpw), except in the first eighth of the layers, which
  llama-quantize raises to IQ3_S (3.4375 bpw). The row names the type the file
  really holds.

Results: bench/results/format_alternatives.json.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from jlcm_gguf import assets, cache, calibrate, learn, pack, scoreboard

RESULTS = Path(__file__).resolve().parent / "results"
TENSORS = ("mlp.gate_proj", "mlp.down_proj")


def stored_error(qtype: pack.JLCMType, settings: learn.Settings, w, H) -> float:
    """Relative output error after to_storage (no packing, so code_bits=8 can be measured too)."""
    q = learn.JLCM(qtype, settings)
    s, C, groups, idx = q.init(w, H)
    if settings.error_feedback:
        idx = q.error_feedback_assign(w, H, s, C, groups, act_order=settings.act_order)
    s, C, idx, _ = q.learn(w, H, s, C, groups, idx)
    s, Cq, groups, idx = q.to_storage(w, H, s, C, groups, idx)
    return float(q.loss(w, q.dequant(s, Cq, groups, idx), H) / q.loss(w, torch.zeros_like(w), H))


def stock_weights(ftype: str) -> tuple[dict, dict]:
    """Dequantized tensors of the stock scoreboard's file of that type, by HF name, and each GGUF tensor's
    (type name, bpw), by GGUF name."""
    from transformers import AutoModelForCausalLM

    from jlcm_gguf.gguf_io import open_reader
    from jlcm_gguf.policy import type_bits
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quantizer import stock_file
    path = stock_file(ftype)
    types = {t.name: (t.tensor_type.name, type_bits(t.tensor_type.name)) for t in open_reader(path).tensors}
    sd = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    return sd, types


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="1,5,11")
    p.add_argument("--calib-seqs", type=int, default=16)
    p.add_argument("--out", type=Path, default=RESULTS / "format_alternatives.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    from transformers import AutoTokenizer

    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    text = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    stream = calibrate.LayerStream(hf)
    hidden = stream.embed(calibrate.calibration_tokens(tok, text, args.calib_seqs, 512, 0))
    want = sorted(int(x) for x in args.layers.split(","))
    base = learn.Settings(n_groups=16)     # the measured rows; JLCM2's default is now a group per row
    stock, stock_types = stock_weights("IQ2_M")
    rows = []
    for i, layer, H in calibrate.float_layers(stream, hidden, want):
        for name in TENSORS:
            w = layer.get_submodule(name).weight.data.float()
            for qtype in (pack.JLCM2, pack.JLCM3):
                extra = 8 * (qtype.n_codes // 2) / 64       # int8 entries cost n_codes/2 more bytes
                alts = {
                    "int4 codebook, grid per block (chosen)": (qtype.bpw, base),
                    "int4 codebook, grid per group": (qtype.bpw, replace(base, round_per="group")),
                    "int8 codebook, grid per block": (qtype.bpw + extra, replace(base, code_bits=8)),
                    "int4 codebook, one group per row": (qtype.bpw, replace(base, n_groups=w.shape[0])),
                }
                for alt, (bpw, cfg) in alts.items():
                    err = stored_error(qtype, cfg, w, H[name])
                    rows.append({"layer": i, "tensor": name, "type": qtype.name, "alternative": alt,
                                 "bpw": bpw, "rel_error": round(err, 7)})
                    print(rows[-1], flush=True)
            key = f"model.layers.{i}.{name}.weight"
            if name == "mlp.down_proj":
                h = H[name]
                err = float(learn.JLCM.loss(w, stock[key], h) / learn.JLCM.loss(w, torch.zeros_like(w), h))
                stype, sbpw = stock_types[f"blk.{i}.ffn_down.weight"]
                rows.append({"layer": i, "tensor": name, "type": stype, "alternative": f"stock {stype} (IQ2_M file)",
                             "bpw": sbpw, "rel_error": round(err, 7)})
                print(rows[-1], flush=True)
    cache.write_json(args.out, {"model": assets.MODEL_NAME, "metric": "relative layer output error L(W^)/tr(W H W^T)",
                                "calibration": {"seqs": args.calib_seqs, "len": 512, "inputs": "float model"},
                                "machine": scoreboard.machine_info(),
                                "commands": ["python bench/format_alternatives.py " + shlex.join(sys.argv[1:])],
                                "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
