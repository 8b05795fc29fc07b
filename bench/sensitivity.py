#!/usr/bin/env python3
"""Which tensors a JLCM type hurts: KLD with its weights on one tensor class only, float elsewhere.

    python bench/sensitivity.py [--row JLCM2] [--chunks 15]

Takes the dequantized weights bench/quantizer.py saved for that row (run it
first), puts them into the float model one class at a time, and evaluates on
the first --chunks chunks of the evaluation text. Results:
bench/results/sensitivity.json.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import torch

from jlcm_gguf import assets, cache, evaluate, scoreboard

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = {"attn_q,attn_k": r"(q|k)_proj", "attn_v": r"v_proj", "attn_output": r"o_proj",
           "ffn_gate,ffn_up": r"(gate|up)_proj", "ffn_down": r"down_proj",
           "layers 0-2": r"layers\.[0-2]\.", "layers 27-29": r"layers\.2[7-9]\.", "all": r"."}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", default="JLCM2")
    p.add_argument("--chunks", type=int, default=15)
    p.add_argument("--out", type=Path, default=RESULTS / "sensitivity.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights_path = cache.cache_dir() / "bench" / "quantizer" / f"{args.row.replace(' ', '_')}.pt"
    if not weights_path.exists():
        p.error(f"no saved weights for --row {args.row}: run bench/quantizer.py for it first")
    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    data = evaluate.eval_data(tok, assets.text_file(assets.EVAL_TEXT), 512, 60)
    data.tokens = data.tokens[:args.chunks]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    ref = evaluate.reference(model, data, f"hf-float32-first{args.chunks}")
    quantized = torch.load(weights_path)
    state = model.state_dict()
    original = {k: state[k].clone() for k in quantized}
    rows = []
    for name, pattern in CLASSES.items():
        for k, w in quantized.items():
            state[k].copy_(w if re.search(pattern, k) else original[k])
        rows.append({"class": name, **evaluate.evaluate(model, data, ref)})
        print(rows[-1], flush=True)
    cache.write_json(args.out, {"model": assets.MODEL_NAME, "row": args.row,
                                "eval": {"text": data.text, "ctx": 512, "chunks": args.chunks},
                                "machine": scoreboard.machine_info(),
                                "commands": ["python bench/sensitivity.py " + shlex.join(sys.argv[1:])],
                                "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
