#!/usr/bin/env python3
"""Levers of the layer-wise stage, measured as layer output error on real layers of the default model.

    python bench/layerwise.py sweeps   [--layers 1,5,11,20] [--calib-seqs 16]
    python bench/layerwise.py rotation [--layers 1,5,11,20] [--calib-seqs 16] [--type JLCM2]
    python bench/layerwise.py order    [--layers 1,5,11,20] [--calib-seqs 16]
    python bench/layerwise.py regroup  [--layers 1,5,11,20] [--calib-seqs 16]

All report the relative output error L(W^)/tr(W H W^T) of the JLCM learner
on each layer's linears, H from float activations of the calibration novels.

sweeps: the column-by-column index sweeps after storage (`Settings.sweeps`,
`JLCM.sweep_indices`) at 0, 3 and 6 sweeps, both types.

rotation: the lever QuaRot and SpinQuant use. With every RMSNorm gain folded
into the linears that read the norm's output, an orthogonal Q can rotate the
residual stream (embedding E Q; q/k/v and gate/up W diag(g) Q; o and down
Q^T W; the head E diag(g_final) Q, which then can no longer be the tied
embedding). The model computes the same function, and its weights and inputs
lose their outlier channels. Here Q is a seeded random orthogonal matrix. The
same learner quantizes the original and the rotated weight, each against its
own H from the same calibration tokens; Q being orthogonal, the relative
errors compare directly.

order: the error feedback's walk over the columns as they come, or by falling
H_ii (GPTQ's act order, `Settings.act_order`), both types, full learner.

regroup: the paper's neuron re-ordering, applied to the input columns of
ffn_down (a permutation of the intermediate neurons, folded into the rows of
gate and up, changes no function): columns sorted by their weight RMS, by
H_ii, or by the product of the two's square roots, so that a 64-weight block
holds columns of like scale or importance. Both types.

Results: bench/results/LEVER.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from jlcm_gguf import assets, cache, calibrate, learn, pack, scoreboard

RESULTS = Path(__file__).resolve().parent / "results"
TENSORS = ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SWEEP_TENSORS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
# each RMSNorm and the linears that read its output, which take its gain
NORM_READERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}


def rotated_state(sd: dict, n_layers: int, Q: torch.Tensor) -> dict:
    """The model's tensors with the norm gains folded in and the residual stream rotated by Q (float64 math)."""
    d = {k: v.double() for k, v in sd.items()}
    E = d["model.embed_tokens.weight"]
    one = torch.ones(Q.shape[0], dtype=torch.float64)
    out = {"model.embed_tokens.weight": E @ Q, "model.norm.weight": one,
           "lm_head.weight": d.get("lm_head.weight", E) * d["model.norm.weight"] @ Q}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        for norm, names in NORM_READERS.items():
            for n in names:
                out[p + n + ".weight"] = d[p + n + ".weight"] * d[p + norm + ".weight"] @ Q
            out[p + norm + ".weight"] = one
        for n in ("self_attn.o_proj", "mlp.down_proj"):
            out[p + n + ".weight"] = Q.T @ d[p + n + ".weight"]
    return {k: v.float().contiguous() for k, v in out.items()}


def rotated_model(src: Path, seed: int) -> Path:
    """An HF directory of the rotated model, in the cache."""
    from safetensors.torch import load_file, save_file
    dest = cache.cache_dir() / "bench" / "rotation" / f"{src.name}-rotated-{seed}"
    if (dest / "config.json").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    cfg = json.loads((src / "config.json").read_text())
    n = cfg["hidden_size"]
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    save_file(rotated_state(load_file(src / "model.safetensors"), cfg["num_hidden_layers"], Q),
              tmp / "model.safetensors", metadata={"format": "pt"})
    cfg["tie_word_embeddings"] = False
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(dest)
    return dest


def max_logit_gap(a: Path, b: Path) -> float:
    """How far the two models' log-probabilities differ on one sequence (the rotation is exact up to rounding)."""
    from transformers import AutoModelForCausalLM
    x = torch.arange(1000, 1128).view(1, -1)
    with torch.no_grad():
        la, lb = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)(x).logits.log_softmax(-1) for p in (a, b))
    return float((la - lb).abs().max())


def errors(hf: Path, tokens, layers: list[int], tensors, variants: dict) -> dict:
    """{(layer, tensor, variant): (relative error, seconds)}; variants: name -> (type, Settings) or
    (type, Settings, key), key(w, H) giving the columns' sort key (regroup)."""
    stream = calibrate.LayerStream(hf)
    out = {}
    for i, layer, H in calibrate.float_layers(stream, stream.embed(tokens), layers):
        for name in tensors:
            w = layer.get_submodule(name).weight.data.float()
            for v, (qtype, settings, *key) in variants.items():
                wv, h = w, H[name]
                if key:
                    p = torch.argsort(key[0](w, h), stable=True)
                    wv, h = w[:, p], h[p][:, p]
                t0 = time.perf_counter()
                out[i, name, v] = (learn.JLCM(qtype, settings).quantize(wv, h).rel_error, time.perf_counter() - t0)
                print(hf.name, i, name, v, *(round(x, 6) for x in out[i, name, v]), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lever", choices=("sweeps", "rotation", "order", "regroup"))
    p.add_argument("--layers", default="1,5,11,20")
    p.add_argument("--calib-seqs", type=int, default=16)
    p.add_argument("--type", default="JLCM2", choices=sorted(pack.TYPES), help="rotation: the type measured")
    p.add_argument("--seed", type=int, default=0, help="rotation: the random rotation's seed")
    p.add_argument("--out", type=Path, help="default: bench/results/LEVER.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    from transformers import AutoTokenizer
    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    text = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    tokens = calibrate.calibration_tokens(tok, text, args.calib_seqs, 512, 0)
    layers = sorted(int(x) for x in args.layers.split(","))
    doc = {"model": assets.MODEL_NAME, "metric": "relative layer output error L(W^)/tr(W H W^T)",
           "calibration": {"seqs": args.calib_seqs, "len": 512, "inputs": "float model"}}
    if args.lever == "sweeps":
        variants = {(t.name, k): (t, learn.Settings(sweeps=k)) for t in (pack.JLCM2, pack.JLCM3) for k in (0, 3, 6)}
        err = errors(hf, tokens, layers, SWEEP_TENSORS, variants)
        rows = [{"layer": i, "tensor": n, "type": t, "sweeps": k, "rel_error": round(e, 7), "seconds": round(sec, 2)}
                for (i, n, (t, k)), (e, sec) in err.items()]
    elif args.lever == "order":
        variants = {(t.name, a): (t, learn.Settings(act_order=a)) for t in (pack.JLCM2, pack.JLCM3) for a in (False, True)}
        err = errors(hf, tokens, layers, TENSORS, variants)
        rows = [{"layer": i, "tensor": n, "type": t, "act_order": a, "rel_error": round(e, 7), "seconds": round(sec, 2)}
                for (i, n, (t, a)), (e, sec) in err.items()]
    elif args.lever == "regroup":
        keys = {"as they come": None, "weight rms": lambda w, h: w.pow(2).mean(0),
                "H_ii": lambda w, h: torch.diagonal(h), "rms x H_ii": lambda w, h: w.pow(2).mean(0) * torch.diagonal(h)}
        variants = {(t.name, k): (t, learn.Settings(), *([f] if f else [])) for t in (pack.JLCM2, pack.JLCM3)
                    for k, f in keys.items()}
        err = errors(hf, tokens, layers, ("mlp.down_proj",), variants)
        rows = [{"layer": i, "tensor": n, "type": t, "columns sorted by": k, "rel_error": round(e, 7)}
                for (i, n, (t, k)), (e, _) in err.items()]
    else:
        qtype = pack.TYPES[args.type]
        rot = rotated_model(hf, args.seed)
        one = {qtype.name: (qtype, learn.Settings())}
        base, turned = errors(hf, tokens, layers, TENSORS, one), errors(rot, tokens, layers, TENSORS, one)
        rows = [{"layer": i, "tensor": n, "type": v, "rel_error": round(e, 7),
                 "rel_error_rotated": round(turned[i, n, v][0], 7), "ratio": round(turned[i, n, v][0] / e, 4)}
                for (i, n, v), (e, _) in base.items()]
        doc.update({"rotation": f"random orthogonal (QR of a seeded Gaussian, seed {args.seed}), norm gains folded",
                    "max_logprob_gap_float": max_logit_gap(hf, rot), "settings": vars(learn.JLCM(qtype).cfg)})
    doc.update({"machine": scoreboard.machine_info(),
                "commands": ["python bench/layerwise.py " + shlex.join(sys.argv[1:])], "rows": rows})
    cache.write_json(args.out or RESULTS / f"{args.lever}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
