#!/usr/bin/env python3
"""The 7B claim: a model with Llama-2-7B's shapes, converted to JLCM2 by streaming, against Q4_0 and
IQ2_XS files of the same shapes in one llama-bench run.

    python bench/llama7b.py [--jlcm-from convert|llama-quantize] [--calib-tokens 512] [--device cpu|cuda]
                            [--convert-only | --prepare-only | --bench-converted] [--work DIR]

The weights are random (seeded normal, std 0.02; norms 1): what this measures is size, memory and
speed, never quality. The tokenizer is Mistral-7B v0.1's SentencePiece model (32000 pieces, the
vocabulary size of Llama-2), shipped inside the mistral-common wheel on PyPI and read as a zip.
The JLCM2 file comes from `jlcm-gguf convert` (--jlcm-from convert: one decoder layer at a time,
reduced calibration, no joint-learning rounds, no distillation, which would hold the whole model in
float) or from the patched llama-quantize (--jlcm-from llama-quantize: csrc's data-free reference
quantizer, the same blocks and bytes without learning). Either way token_embd is JLCM2 and
output.weight Q4_0, so the whole file counts every byte against 2 GiB. Writes
bench/results/llama7b.json (machine, exact commands, rows). --convert-only records its conversion
there as `<device>_convert` (time per layer, peak RSS, size; the log beside it) and leaves the rows of
the last full run alone; --bench-converted then runs llama-bench on that file beside --stock.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from jlcm_gguf import assets, cache, llama_cpp, scoreboard
from jlcm_gguf.gguf_io import open_reader

RESULTS = Path(__file__).resolve().parent / "results"
TOKENIZER_WHEEL = ("mistral-common", "mistral_common-1.13.1-py3-none-any.whl",
                   "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af")
TOKENIZER_MEMBER = "mistral_common/data/tokenizer.model.v1"
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
          "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
          "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
EMBD_TYPE, OUTPUT_TYPE = "JLCM2", "Q4_0"
GIB = 2 ** 30


def layer_tensors(i: int) -> dict[str, tuple[int, ...]]:
    h, f = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h),
            p + "self_attn.v_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}


def make_model(out: Path, seed: int = 0) -> Path:
    """An HF directory: config, the SentencePiece tokenizer, one fp16 safetensors shard per layer."""
    from safetensors.numpy import save_file
    if (out / "model.safetensors.index.json").exists():
        return out
    tmp = out.with_name(out.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    wheel = cache.fetch_pypi_file(*TOKENIZER_WHEEL, "Mistral-7B v0.1's tokenizer", "(no flag: a bench asset)")
    with zipfile.ZipFile(wheel) as z:
        (tmp / "tokenizer.model").write_bytes(z.read(TOKENIZER_MEMBER))
    (tmp / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False}))
    (tmp / "config.json").write_text(json.dumps(CONFIG, indent=1))
    rng = np.random.default_rng(seed)
    h, v, n = CONFIG["hidden_size"], CONFIG["vocab_size"], CONFIG["num_hidden_layers"]
    shards = [{"model.embed_tokens.weight": (v, h)}] + [layer_tensors(i) for i in range(n)] + \
             [{"model.norm.weight": (h,), "lm_head.weight": (v, h)}]
    weight_map = {}
    for k, shapes in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {t: (np.ones(s, np.float16) if len(s) == 1 else
                       (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16))
                   for t, s in shapes.items()}
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
        print(f"  wrote {name}", file=sys.stderr, flush=True)
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tmp.rename(out)
    return out


def run_logged(argv: list[str], commands: list[str]) -> tuple[dict, str]:
    commands.append(shlex.join(argv))
    print(f"$ {shlex.join(argv)}", file=sys.stderr, flush=True)
    return scoreboard.run_measured(argv, echo=True)


def convert_jlcm2(model: Path, out: Path, calib_tokens: int, device: str, commands: list[str]) -> dict:
    argv = [sys.executable, "-m", "jlcm_gguf.cli", "convert", str(model), "-o", str(out), "--type", "JLCM2",
            "--token-embedding-type", EMBD_TYPE, "--output-tensor-type", OUTPUT_TYPE,
            "--calib-tokens", str(calib_tokens), "--calib-len", "512", "--outer-steps", "0",
            "--sweeps", "0", "--distill-epochs", "0", "--device", device]
    stats, err = run_logged(argv, commands)
    log = layer_log(err)
    done = layer_times(log)          # (layers done, elapsed s) as each layer finished
    if len(done) > 1:
        layers, seconds = done[-1]
        stats["layers"], stats["layer_stage_seconds"] = layers, seconds
        stats["seconds_per_layer"] = round(seconds / layers, 2)
        stats["seconds_by_layer"] = [b - a for (_, a), (_, b) in zip(done, done[1:])]
    stats["device"] = device
    stats["log"] = log
    if gpu := re.search(r"peak GPU memory ([0-9.]+) GiB", err):
        stats["peak_gpu_gib"] = float(gpu.group(1))
    return stats


_BAR = re.compile(r"quantizing:.*?\| (\d+)/\d+ \[([0-9:]+)<")     # tqdm's layer bar: layers done, elapsed


def layer_log(err: str) -> str:
    """The conversion's output with tqdm's redraws reduced to one line per finished layer."""
    lines, last = [], None
    for line in err.split("\n"):     # not splitlines(), which also splits at tqdm's \r
        states = line.split("\r")
        for st in states[:-1]:
            n = _BAR.search(st)
            if n and n.group(1) != last:
                lines.append(st.strip())
                last = n.group(1)
        lines.append(states[-1].strip())
    return "\n".join(x for x in lines if x) + "\n"


def layer_times(log: str) -> list[tuple[int, int]]:
    """(layers done, elapsed seconds) at each finished layer of a layer_log, the final bar included."""
    out = []
    for line in log.splitlines():
        if (m := _BAR.search(line)) and (not out or int(m.group(1)) != out[-1][0]):
            out.append((int(m.group(1)), sum(int(x) * 60 ** i for i, x in enumerate(reversed(m.group(2).split(":"))))))
    return out


def record_conversion(args, row: dict, commands: list[str], log: str) -> int:
    """--convert-only: the conversion's record goes under `<device>_convert` in the results, beside the
    rows of the last full run (which it does not replace), and its log beside them."""
    import torch
    rec = {"command": commands[-1], "machine": scoreboard.machine_info(), "date": time.strftime("%Y-%m-%d"),
           "threads": torch.get_num_threads(), **row["convert"],
           **{k: row[k] for k in ("file_bytes", "bpw_file", "bpw_linear", "linear_types", "token_embd", "output")
              if k in row}, "file_gib": round(row["file_bytes"] / GIB, 4)}
    if args.device == "cuda":
        rec["machine"]["gpu"] = torch.cuda.get_device_name(0)
    logfile = args.out.with_name(f"{args.out.stem}-{args.device}.log")
    logfile.write_text(log)
    rec["log"] = str(logfile.relative_to(RESULTS.parent.parent)) if logfile.is_relative_to(RESULTS.parent.parent) \
        else str(logfile)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc[f"{args.device}_convert"] = rec
    cache.write_json(args.out, doc)
    print(json.dumps({k: v for k, v in rec.items() if k != "machine"}, indent=1))
    return 0


def stock_files(args, model: Path, runner) -> list[Path]:
    """The --stock types of the model by llama-quantize with a 1-chunk imatrix (cached in --work)."""
    from jlcm_gguf.convert import reference_gguf
    f16 = reference_gguf(model, quiet=True)
    imat = scoreboard.imatrix(runner, f16, assets.text_file(assets.CALIB_TEXT), args.work / "imatrix-1.gguf",
                              chunks=1, threads=args.threads)
    return [scoreboard.quantize(runner, f16, args.work / f"llama7b-{t}.gguf", t, imat, args.threads)
            for t in args.stock.split(",") if t]


def bench_converted(args, model: Path, commands: list[str]) -> int:
    key = f"{args.device}_convert"
    doc = json.loads(args.out.read_text())
    jlcm = args.work / f"llama7b-JLCM2-{args.device}.gguf"
    if key not in doc or not jlcm.exists():
        raise SystemExit(f"--bench-converted: no {jlcm} with a {key} record in {args.out}; run --convert-only first")
    runner = scoreboard.Runner(llama_cpp.build(quiet=True))
    files = [jlcm, *stock_files(args, model, runner)]
    speeds = scoreboard.bench(runner, files, args.threads, reps=2, prompt=128)
    doc[key]["bench"] = {"date": time.strftime("%Y-%m-%d"), "machine": scoreboard.machine_info(),
                         "commands": commands + runner.commands,
                         "rows": [{"file": f.name, "file_bytes": f.stat().st_size, **speeds[f]} for f in files]}
    cache.write_json(args.out, doc)
    for r in doc[key]["bench"]["rows"]:
        print(f"{r['file']:32s} {r['file_bytes'] / GIB:.3f} GiB  pp128 {r['pp128']}  tg128 {r['tg128']}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=cache.cache_dir() / "bench" / "llama7b")
    p.add_argument("--calib-tokens", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--jlcm-from", choices=("convert", "llama-quantize"), default="convert",
                   help="make the JLCM2 file with jlcm-gguf convert (default) or the patched llama-quantize")
    p.add_argument("--stock", default="Q4_0,IQ2_XS", help="stock types to quantize and bench beside it")
    p.add_argument("--convert-only", action="store_true", help="the JLCM2 conversion only (e.g. on a GPU machine)")
    p.add_argument("--prepare-only", action="store_true",
                   help="make the model and the pinned converter's F16 file, then stop (ahead of a timed conversion)")
    p.add_argument("--bench-converted", action="store_true",
                   help="llama-bench the file a --convert-only run made beside the --stock types (one run, two "
                        "passes) and add the speeds to its record")
    p.add_argument("--out", type=Path, default=RESULTS / "llama7b.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    commands = ["python bench/llama7b.py " + shlex.join(sys.argv[1:])]
    t0 = time.time()
    model = make_model(args.work / "llama2-7b-shaped-random")
    if args.prepare_only:
        from jlcm_gguf.convert import reference_gguf
        print(reference_gguf(model, quiet=False))
        return 0
    if args.bench_converted:
        return bench_converted(args, model, commands)
    rows = []
    if args.jlcm_from == "convert":
        jlcm = args.work / f"llama7b-JLCM2-{args.device}.gguf"
        conv = convert_jlcm2(model, jlcm, args.calib_tokens, args.device, commands)
        log = conv.pop("log")
        rows.append({"name": "JLCM2", "file": jlcm.name, "made_by": "jlcm-gguf convert", "convert": conv,
                     **scoreboard.tensor_stats(jlcm), "token_embd": EMBD_TYPE, "output": OUTPUT_TYPE})
        if args.convert_only:
            return record_conversion(args, rows[0], commands, log)
    if not args.convert_only:
        from jlcm_gguf.convert import reference_gguf
        build = llama_cpp.build(quiet=True)
        runner = scoreboard.Runner(build)
        f16 = reference_gguf(model, quiet=True)
        if args.jlcm_from == "llama-quantize":
            jlcm = scoreboard.quantize(runner, f16, args.work / "llama7b-JLCM2-llama-quantize.gguf", "JLCM2", None,
                                       args.threads, ("--token-embedding-type", EMBD_TYPE.lower(),
                                                      "--output-tensor-type", OUTPUT_TYPE.lower()))
            rows.append({"name": "JLCM2", "file": jlcm.name,
                         "made_by": "patched llama-quantize (data-free reference quantizer, no calibration)",
                         "convert": scoreboard.quantize_stats(jlcm), **scoreboard.tensor_stats(jlcm),
                         "token_embd": EMBD_TYPE, "output": OUTPUT_TYPE})
        for path in stock_files(args, model, runner):
            t = path.stem.removeprefix("llama7b-")
            st = scoreboard.tensor_stats(path)
            types = {x.name: x.tensor_type.name for x in open_reader(path).tensors
                     if x.name in ("token_embd.weight", "output.weight")}
            rows.append({"name": t, "file": path.name, "made_by": "llama-quantize --imatrix (1 chunk of Emma)",
                         "convert": scoreboard.quantize_stats(path), **st,
                         "token_embd": types.get("token_embd.weight"), "output": types.get("output.weight")})
        # pp128, not pp512: a pp512 run of a 7B takes minutes here
        speeds = scoreboard.bench(runner, [args.work / r["file"] for r in rows], args.threads, reps=2, prompt=128)
        for r in rows:
            r.update(speeds.get(args.work / r["file"], {}))
        commands += runner.commands
    for r in rows:
        r["file_gib"] = round(r["file_bytes"] / GIB, 4)
    doc = {"what": "random weights in Llama-2-7B's shapes (quality means nothing); JLCM2 by "
                   + (f"jlcm-gguf convert with {args.calib_tokens} calibration tokens, no learning rounds, "
                      "no distillation" if args.jlcm_from == "convert" else
                      "the patched llama-quantize (data-free reference quantizer: the same format, no learning)"),
           "machine": scoreboard.machine_info(), "commands": commands, "rows": rows,
           "seconds": round(time.time() - t0, 1)}
    if args.device == "cuda":
        import torch
        doc["machine"]["gpu"] = torch.cuda.get_device_name(0)
    # the partial-conversion records (lent GPU, timed CPU layer) are written by hand from their own
    # runs' logs: keep them
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update({k: old[k] for k in ("cuda_convert", "cpu_convert") if k in old})
    cache.write_json(args.out, doc)
    for r in rows:
        print(f"{r['name']:8s} {r['file_gib']:.3f} GiB  bpw file {r['bpw_file']:.3f}  linear {r['bpw_linear']:.3f}  "
              f"pp128 {r.get('pp128', '-')}  tg128 {r.get('tg128', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
