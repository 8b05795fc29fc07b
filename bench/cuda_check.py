#!/usr/bin/env python3
"""The quantizer with --device cuda: same pipeline, learning on the GPU, against the CPU in the same run.

    python bench/cuda_check.py --tokenizer DIR --text FILE [--layers 4] [--out FILE]

A llama model with the default model's shapes and tokenizer but random weights
and only --layers decoder layers (its quality means nothing; the point is that
every step runs on the device and agrees with the CPU). Both runs quantize it
to JLCM2 with the default settings and distil it; the JSON records the wall
time of each stage on each device and the relative output errors.
Used on a lent GPU machine, where the real model cannot travel.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch


def tiny_model(tokenizer_dir: Path, layers: int, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def run(hf: Path, text: str, device: str) -> dict:
    from jlcm_gguf import pack
    from jlcm_gguf.quantize import quantize_model, uniform
    t0 = time.time()
    q = quantize_model(hf, text, uniform(pack.JLCM2), n_seqs=16, seq_len=512, device=device, quiet=True)
    errs = [r.rel_error for r in q.linears.values()]
    ok = all(torch.equal(r.weight.cpu(), torch.from_numpy(pack.dequantize(r.qtype, r.blocks)).view_as(r.weight.cpu()))
             for r in q.linears.values())
    return {"device": device, "seconds": round(time.time() - t0, 1), "stages": q.seconds,
            "mean_rel_error": sum(errs) / len(errs), "distill_kl": q.distill_history, "blocks_match_weights": ok}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cuda_check.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    text = args.text.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as d:
        hf = tiny_model(args.tokenizer, args.layers, Path(d) / "tiny")
        rows = [run(hf, text, "cuda"), run(hf, text, "cpu")]
    doc = {"what": f"random-weight llama, default model's shapes and tokenizer, {args.layers} layers, JLCM2, "
                   "16 x 512 calibration tokens, default learning and distillation",
           "machine": {"gpu": torch.cuda.get_device_name(0), "cpu_threads": torch.get_num_threads(),
                       "torch": torch.__version__, "os": platform.platform()},
           "commands": ["python bench/cuda_check.py " + shlex.join(sys.argv[1:])], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
