#!/usr/bin/env python3
"""Quantizer quality: JLCM types and ablations against stock types, all through one torch evaluation.

    python bench/quantizer.py [--rows main,ablation,stock] [--calib-seqs 64] [--chunks 60]

Every row is evaluated by the same code on the same tokens (Pride and Prejudice,
ctx 512, 60 chunks, second half of each chunk scored): perplexity and KLD
against the float model. Stock rows load llama.cpp's own GGUF files (from the
stock scoreboard's work directory) through transformers' GGUF loader. JLCM rows
replace linear weights by their dequantized JLCM codes; every other tensor
(embeddings, norms, and the linears a row leaves alone) comes from the stock
IQ4_NL file, so "the rest" is equal; the quantizer sees the linears a row
leaves alone as that file holds them. Rows go to bench/results/quantizer.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from jlcm_gguf import assets, cache, evaluate, llama_cpp, pack, quantize, scoreboard
from jlcm_gguf.distill import DistillSettings
from jlcm_gguf.learn import Settings
from jlcm_gguf.quantize import Plan, peak_rss_bytes, quantize_model

RESULTS = Path(__file__).resolve().parent / "results"
STOCK = ("IQ4_NL", "Q4_0", "IQ3_XXS", "IQ2_M", "IQ2_XS")
REST = "IQ4_NL"


def variants():
    """name -> (variant, type for ffn_down, type elsewhere (None: the stock REST file), settings, distillation),
    and optionally a sixth item: the type of the first eighth of the ffn_down layers (llama.cpp's IQ2_M and
    IQ2_XS files raise those, to IQ3_S and Q2_K; the "+ first 1/8 ffn_down" rows do the same with JLCM3).

    The ablations stop after the layer-wise stage (no distillation), so they compare the
    layer-wise steps alone; "JLCM2 no-distill" is their baseline."""
    J2, J3 = pack.JLCM2, pack.JLCM3
    full, none = DistillSettings(), DistillSettings(epochs=0)
    return {
        "main": {
            "JLCM2": ("default (a group per row)", J2, J2, Settings(), full),
            "JLCM3": ("default (16 groups)", J3, J3, Settings(), full),
            "JLCM2 sequential": ("default, and o's and down's inputs measured after q/k/v and gate/up hold their codes",
                                 J2, J2, Settings(sequential=True), full),
            "JLCM2-ffn_down": ("default (a group per row)", J2, None, Settings(), full),
            "JLCM2-ffn_down 16 groups": ("16 groups (the default before a group per row)", J2, None,
                                         Settings(n_groups=16), full),
            "JLCM2-ffn_down + first 1/8 JLCM3 16 groups": (
                "ffn_down of layers < n/8 JLCM3, as llama.cpp's IQ2_M raises them to IQ3_S; 16 groups", J2, None,
                Settings(n_groups=16), full, J3),
            "JLCM2-ffn_down + first 1/8 JLCM3 + group per row": (
                "layers < n/8 JLCM3 and a group per row (both types)", J2, None, Settings(n_groups=0), full, J3),
        },
        "ablation": {
            "JLCM2 float-target": ("f: layer-wise target is the float model's output (T = W B H^-1), with distillation",
                                   J2, J2, Settings(target="float", n_groups=16), full),
            "JLCM2 no-distill": ("c: layer-wise stage only (proximal update), no distillation", J2, J2,
                                 Settings(n_groups=16), none),
            "JLCM2 kmeans-only": ("a: k-means init, no learning, no error feedback, no distillation", J2, J2,
                                  Settings(update="none", error_feedback=False, n_groups=16), none),
            "JLCM2 plain-STE": ("b: joint learning, plain STE index update, no distillation", J2, J2,
                                Settings(update="ste", n_groups=16), none),
            "JLCM2 1 group": ("d/e: one group (a codebook per block column of the tensor), no distillation", J2, J2,
                              Settings(n_groups=1), none),
            "JLCM2 4 groups": ("e: 4 groups, no distillation", J2, J2, Settings(n_groups=4), none),
            "JLCM2 16 groups": ("e: 16 groups (the default before a group per row), with distillation", J2, J2,
                                Settings(n_groups=16), full),
            "JLCM3 group per row": ("e: a group per row (n_groups=0), with distillation", J3, J3, Settings(n_groups=0),
                                    full),
        },
    }


def first_eighth(n_layers: int) -> int:
    """How many leading ffn_down layers llama.cpp's IQ2 ftypes raise (i_ffn_down < n_ffn_down / 8)."""
    return n_layers // 8


def _quantize_job(args):
    hf, text, down_t, other_t, first_t, n_layers, rest_path, settings, distill, n_seqs, device, out = args
    torch.set_num_threads(2)

    def choose(i, name):
        if name != "mlp.down_proj":
            return other_t
        return first_t if first_t and i < first_eighth(n_layers) else down_t

    # the linears a row leaves to the REST file: the learner and the distillation see them as that file
    # holds them, as `jlcm-gguf convert` does for the stock types it writes
    rest = load_gguf_model(Path(rest_path)).state_dict() if other_t is None else None
    plan = Plan(choose, settings, distill, held=(lambda name, w: rest[name]) if rest is not None else None)
    t0 = time.time()
    q = quantize_model(Path(hf), text, plan, n_seqs=n_seqs, seed=settings.seed, device=device, quiet=False)
    seconds = time.time() - t0
    torch.save({**{k: r.weight.cpu() for k, r in q.linears.items()}, **q.norms}, out)
    return seconds, peak_rss_bytes(), {"stages": q.seconds, "distill_kl": q.distill_history}


def stock_file(qtype: str) -> Path:
    build = llama_cpp.build(quiet=True)
    work = cache.cache_dir() / "bench" / "stock"
    work.mkdir(parents=True, exist_ok=True)
    runner = scoreboard.Runner(build)
    return scoreboard.stock_entries(runner, assets.f16_reference(), assets.text_file(assets.CALIB_TEXT), work,
                                    [qtype])[0].path


def load_gguf_model(path: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def eval_setup(chunks: int, ctx: int = 512):
    """(the evaluation tokens, the float model's reference on them), as every JLCM row is scored."""
    from transformers import AutoTokenizer
    hf = assets.hf_model_dir()
    data = evaluate.eval_data(AutoTokenizer.from_pretrained(hf), assets.text_file(assets.EVAL_TEXT), ctx, chunks)
    return data, evaluate.reference(quantize._float_model(hf, "cpu"), data, "hf-float32")


def rest_model(tensors: dict, rest_path: Path | None = None):
    """The REST file's model with `tensors` (HF name -> values) in place of its own: how a JLCM row is evaluated."""
    m = load_gguf_model(rest_path or stock_file(REST))
    sd = m.state_dict()
    for k, v in tensors.items():
        sd[k].copy_(v)
    return m


def linear_bits(rest: dict, down_t, other_t, first_t=None, n_layers: int = 1) -> float:
    """bpw of the linear layers for a row: JLCM blocks where JLCM is used, the REST file's bytes elsewhere
    (every ffn_down layer has the same shape, so the first eighth holds n_down * k / n_layers weights)."""
    down_bpw = down_t.bpw if down_t else rest["bpw_down"]
    if first_t:
        k = first_eighth(n_layers)
        down_bpw = (k * first_t.bpw + (n_layers - k) * down_bpw) / n_layers
    down_bits = rest["n_down"] * down_bpw
    other_bits = (rest["n_all"] - rest["n_down"]) * (other_t.bpw if other_t else rest["bpw_other"])
    return (down_bits + other_bits) / rest["n_all"]


def linear_split(path: Path) -> dict:
    """Weights and bits per weight of a file's linear layers, ffn_down apart from the rest."""
    from jlcm_gguf.gguf_io import open_reader
    elems = {"down": 0, "other": 0}
    nbytes = {"down": 0, "other": 0}
    for t in open_reader(path).tensors:
        if scoreboard.is_linear(t.name):
            part = "down" if t.name.endswith("ffn_down.weight") else "other"
            elems[part] += int(t.n_elements)
            nbytes[part] += int(t.n_bytes)
    return {"n_all": elems["down"] + elems["other"], "n_down": elems["down"],
            "bpw_down": 8 * nbytes["down"] / elems["down"], "bpw_other": 8 * nbytes["other"] / elems["other"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="stock,main,ablation")
    p.add_argument("--only", default="", help="comma-separated row names to run (default: all in --rows)")
    p.add_argument("--calib-seqs", type=int, default=64)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--device", default="cpu", help="torch device for the learning (cuda when torch sees a GPU)")
    p.add_argument("--out", type=Path, default=RESULTS / "quantizer.json")
    p.add_argument("--views-only", action="store_true", help="redraw the PNG and table from the JSON, measure nothing")
    args = p.parse_args()
    if args.views_only:
        write_views(json.loads(args.out.read_text()), args.out)
        return 0
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = assets.hf_model_dir()
    tok = AutoTokenizer.from_pretrained(hf)
    data = evaluate.eval_data(tok, assets.text_file(assets.EVAL_TEXT), args.ctx, args.chunks)
    float_model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    ref = evaluate.reference(float_model, data, "hf-float32")
    del float_model
    calib = assets.joined_text(assets.CALIBRATION_NOVELS).read_text(encoding="utf-8")
    header = {
        "model": assets.MODEL_NAME,
        "eval": {"text": data.text, "ctx": args.ctx, "chunks": args.chunks, "scored_tokens_per_chunk": args.ctx // 2 - 1,
                 "evaluator": "torch (jlcm_gguf.evaluate), KLD vs the float32 HF model"},
        "calibration": {"texts": list(assets.CALIBRATION_NOVELS), "seqs": args.calib_seqs, "len": 512},
        "rest": f"non-JLCM tensors of JLCM rows come from the stock {REST} file",
        "machine": scoreboard.machine_info(),
        "commands": ["python bench/quantizer.py " + shlex.join(sys.argv[1:])],
    }
    groups = args.rows.split(",")
    only = set(filter(None, args.only.split(",")))
    rest_path = stock_file(REST)
    rest = linear_split(rest_path)
    n_layers = json.loads((hf / "config.json").read_text())["num_hidden_layers"]

    if "stock" in groups:
        for qtype in STOCK:
            if only and qtype not in only:
                continue
            path = stock_file(qtype)
            st = scoreboard.tensor_stats(path)
            m = load_gguf_model(path)
            row = {"name": qtype, "kind": "stock", "variant": "llama-quantize, imatrix from emma",
                   "bpw_linear": st["bpw_linear"], "linear_types": st["linear_types"], **evaluate.evaluate(m, data, ref)}
            print(row, flush=True)
            write_views(scoreboard.merge_rows(args.out, header, [row]), args.out)

    for group in ("main", "ablation"):
        if group not in groups:
            continue
        for name, (variant, down_t, other_t, settings, distill, *first) in variants()[group].items():
            if only and name not in only:
                continue
            first_t = first[0] if first else None
            out = cache.cache_dir() / "bench" / "quantizer" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".pt")
            out.parent.mkdir(parents=True, exist_ok=True)
            job = (str(hf), calib, down_t, other_t, first_t, n_layers, str(rest_path), settings, distill,
                   args.calib_seqs, args.device, out)
            with mp.get_context("spawn").Pool(1) as pool:
                seconds, rss, stages = pool.apply(_quantize_job, (job,))
            m = rest_model(torch.load(out), rest_path)
            row = {"name": name, "kind": "jlcm", "variant": variant,
                   "bpw_linear": round(linear_bits(rest, down_t, other_t, first_t, n_layers), 4),
                   "settings": vars(settings), "distill": {**vars(distill), "bf16": distill.uses_bf16(args.device)}, "calib_seqs": args.calib_seqs, **stages, "quantize_seconds": round(seconds, 1), "peak_rss_bytes": rss,
                   "machine": header["machine"],
                   **evaluate.evaluate(m, data, ref)}
            print(row, flush=True)
            write_views(scoreboard.merge_rows(args.out, header, [row]), args.out)
    return 0


def sweeps_run(settings: dict) -> int:
    """Index sweeps a JLCM row ran: none without index updates, and none in rows measured before the sweeps
    existed (their settings lack the key)."""
    return 0 if settings.get("update") == "none" else settings.get("sweeps", 0)


def write_views(doc: dict, out: Path) -> None:
    """quantizer.png (KLD against bpw) and quantizer.md (the table the README shows)."""
    scoreboard.plot({**doc, "kld_against": "float32"}, out.with_suffix(".png"))
    lines = ["| row | kind | variant | calibration | sweeps | bpw linear | PPL | KLD | quantize s | peak RSS GB |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        secs = r.get("quantize_seconds")
        rss = r.get("peak_rss_bytes")
        epochs = (r.get("distill") or {}).get("epochs", 0)
        windows = max((r.get("distill") or {}).get("seqs", 0), r.get("calib_seqs", 0))
        distilled = (f", {windows} windows" if windows > r.get("calib_seqs", 0) else "") + f" × {epochs} distill"
        calib = f"{r['calib_seqs']} seqs" + (distilled if epochs else "") if "calib_seqs" in r else "—"
        sweeps = sweeps_run(r["settings"]) if "settings" in r else "—"
        lines.append(f"| {r['name']} | {r['kind']} | {r['variant']} | {calib} | {sweeps} | {r['bpw_linear']:.2f} | {r['ppl']:.3f} | "
                     f"{r['kld']:.4f} | {'—' if secs is None else f'{secs:.0f}'} | "
                     f"{'—' if rss is None else f'{rss / 2**30:.2f}'} |")
    e = doc["eval"]
    machines: dict[str, list[str]] = {}
    for r in doc["rows"]:
        m = r.get("machine", doc["machine"])
        machines.setdefault(f"{m['cpu']}, {m['date']}", []).append(r["name"])
    where = "; ".join(f"{k}: {', '.join(v)}" if len(machines) > 1 else k for k, v in machines.items())
    lines += ["", f"{doc['model']}, torch evaluation on {e['text']} (ctx {e['ctx']} × {e['chunks']} chunks, "
                  f"second half of each chunk scored), KLD against the float model; {doc['machine']['cores']} cores "
                  f"({where})."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
