"""The jlcm-gguf command line."""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__

DEMO_PROMPT = "The capital of France is"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return str(n)


def cmd_assets(args) -> int:
    from . import assets
    print(f"model (Q4_1 GGUF): {assets.model_gguf()}")
    print(f"model (HF dir):    {assets.hf_model_dir()}")
    print(f"model (F16 GGUF):  {assets.f16_reference()}")
    for name, path in assets.novels().items():
        role = "calibration" if name in assets.CALIBRATION_NOVELS else "evaluation"
        print(f"text ({role:11s}): {path}")
    return 0


def cmd_llama_cpp(args) -> int:
    from . import llama_cpp
    if args.action == "build":
        b = llama_cpp.build(args.arch, quiet=args.quiet)
    else:
        b = llama_cpp.find_build(args.arch)
        if b is None:
            print(f"jlcm-gguf: no llama.cpp build for --arch {args.arch} yet; run 'jlcm-gguf llama-cpp build --arch {args.arch}'",
                  file=sys.stderr)
            return 1
    print(b.bin_dir)
    return 0


def cmd_generate(args) -> int:
    from . import assets, llama_cpp
    model = Path(args.model) if args.model else assets.f16_reference()
    if not model.is_file():
        print(f"jlcm-gguf: model file {model} does not exist (--model)", file=sys.stderr)
        return 2
    b = llama_cpp.build()
    print(args.prompt + llama_cpp.generate(b, model, args.prompt, args.n_predict, args.threads))
    return 0


def cmd_demo(args) -> int:
    from . import demo
    if args.model is not None and not Path(args.model).is_file():
        print(f"jlcm-gguf: {args.model}: no such file (--model)", file=sys.stderr)
        return 2
    return demo.run(args.type, args.prompt or demo.DEMO_QUESTION, args.n_predict, args.threads, args.chunks,
                    args.quiet, Path(args.model) if args.model else None)


def cmd_bench(args) -> int:
    from . import scoreboard
    try:
        return scoreboard.run(args, ["jlcm-gguf", "bench", *args.argv])
    except (FileNotFoundError, ValueError) as e:
        print(f"jlcm-gguf: {e}", file=sys.stderr)
        return 2


def cmd_convert(args) -> int:
    from . import convert
    overrides = []
    for item in args.tensor_type or []:
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern:
            raise convert.ConvertError(f"--tensor-type {item!r}: expected REGEX=TYPE, e.g. 'ffn_down=JLCM3'")
        overrides.append((pattern, type_name))
    opts = convert.Options(qtype=args.type, target_bpw=args.target_bpw, tensor_types=overrides, token_embedding_type=args.token_embedding_type,
                           output_tensor_type=args.output_tensor_type, calib=[Path(p) for p in args.calib or []],
                           calib_tokens=args.calib_tokens, calib_len=args.calib_len, seed=args.seed,
                           outer_steps=args.outer_steps, sweeps=args.sweeps, guide=args.guide, n_groups=args.groups, distill_epochs=args.distill_epochs,
                           distill_seqs=args.distill_seqs,
                           distill_bf16={"auto": None, "float32": False, "bfloat16": True}[args.distill_dtype],
                           device=args.device,
                           quiet=args.quiet)
    t0 = time.time()
    rows, notes = convert.convert(Path(args.model), Path(args.output), opts)
    if not args.quiet:
        print(convert.summary_table(rows, Path(args.output).stat().st_size))
        for note in notes:
            print(note)
        print(f"wrote {args.output} in {time.time() - t0:.0f} s")
        if args.device.startswith("cuda"):
            import torch
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")
    return 0


def cmd_inspect(args) -> int:
    from . import convert
    path = Path(args.file)
    if not path.is_file():
        raise convert.ConvertError(f"{path}: no such file")
    rows = convert.summary_rows(path)
    if args.tensors:
        print(f"{'tensor':<28} {'type':<8} {'weights':>10} {'bytes':>10} {'bpw':>7}")
        for r in rows:
            print(f"{r.name:<28} {r.type_name:<8} {r.n_elements:>10} {r.n_bytes:>10} {8 * r.n_bytes / r.n_elements:>7.3f}")
    print(convert.summary_table(rows, path.stat().st_size))
    stats = convert.codebook_stats(path)
    if stats:
        levels = np.mean([s["distinct_levels_per_block"] for s in stats.values()])
        lo = min(s["scale_min"] for s in stats.values())
        hi = max(s["scale_max"] for s in stats.values())
        hist = np.sum([s["entry_histogram"] for s in stats.values()], axis=0)
        print(f"JLCM codebooks: {len(stats)} tensors, {levels:.2f} distinct levels used per block on average, "
              f"|scale| in [{lo:.3g}, {hi:.3g}]")
        print("codebook entries -8..7: " + " ".join(str(int(h)) for h in hist))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jlcm-gguf", description="Learned grouped-codebook quantization for GGUF models.")
    p.add_argument("--version", action="version", version=f"jlcm-gguf {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("assets", help="fetch the default model and text into the cache and print their paths")
    s.set_defaults(func=cmd_assets)

    s = sub.add_parser("llama-cpp", help="build or locate the pinned, patched llama.cpp")
    s.add_argument("action", choices=("build", "path"))
    s.add_argument("--arch", choices=("native", "aarch64"), default="native",
                   help="native: this machine (x86 at AVX2); aarch64: cross-build to run under qemu-aarch64")
    s.add_argument("--quiet", action="store_true", help="hide the compiler's output")
    s.set_defaults(func=cmd_llama_cpp)

    s = sub.add_parser("generate", help="greedy generation with llama.cpp")
    s.add_argument("-m", "--model", help="GGUF file (default: the F16 reference of the default model)")
    s.add_argument("-p", "--prompt", default=DEMO_PROMPT)
    s.add_argument("-n", "--n-predict", type=int, default=24)
    s.add_argument("-t", "--threads", type=int, default=2)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("demo", help="the default model from nothing to a JLCM file answering in llama.cpp",
                       description="Fetch the default model and text, build the patched llama.cpp, convert with "
                                   "the default settings (cached after the first run), ask the F16 reference and "
                                   "the JLCM file the same question, and compare size, bpw, perplexity and speed.")
    s.add_argument("--type", default="JLCM2", help="JLCM type of the linear layers (default JLCM2)")
    s.add_argument("-m", "--model", help="show this JLCM GGUF of the default model instead of converting one")
    s.add_argument("-p", "--prompt", help="the question, asked in the model's chat format "
                                          "(default: 'What is the capital of France?')")
    s.add_argument("-n", "--n-predict", type=int, default=32)
    s.add_argument("-t", "--threads", type=int, default=2)
    s.add_argument("--chunks", type=int, default=8, help="512-token chunks of the evaluation novel to measure (default 8)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("convert", help="quantize an HF model (or a GGUF of one) into a JLCM GGUF",
                       description="Quantize MODEL (an HF directory, or a GGUF that is dequantized first) into a "
                                   "GGUF whose linear layers are JLCM tensors; everything else is what llama.cpp's "
                                   "own converter writes.")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
    s.add_argument("--type", default="JLCM2", help="type of the linear layers: JLCM2, JLCM3 or a stock type "
                                                     "(default JLCM2)")
    s.add_argument("--target-bpw", type=float, metavar="X",
                   help="mix JLCM2 and JLCM3 by measured sensitivity so the whole file (every byte) lands "
                        "within 0.05 of X bits per weight")
    s.add_argument("--tensor-type", action="append", metavar="REGEX=TYPE",
                   help="type for the linears whose GGUF name matches REGEX (repeatable; the last match wins)")
    s.add_argument("--token-embedding-type", default="Q8_0", help="type of token_embd (default Q8_0); a JLCM type is "
                                                                   "quantized by the data-free reference quantizer")
    s.add_argument("--output-tensor-type", default="Q8_0", help="type of output.weight when the model has its own "
                                                                 "(default Q8_0; tied models have none); a JLCM type "
                                                                 "as for --token-embedding-type")
    s.add_argument("--calib", nargs="+", metavar="FILE", help="calibration text files (default: the calibration "
                                                               "novels Emma, Sense and Sensibility, Mansfield Park)")
    s.add_argument("--calib-tokens", type=int, default=64 * 512, help="calibration tokens (default 32768)")
    s.add_argument("--calib-len", type=int, default=512, help="tokens per calibration sequence (default 512)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--outer-steps", type=int, default=4, help="rounds of codebook/scale and index learning per "
                                                              "linear (default 4; 0: k-means + error feedback)")
    s.add_argument("--sweeps", type=int, default=3, help="column-by-column index sweeps per linear against its "
                                                         "stored codebooks (default 3; 0 skips them)")
    s.add_argument("--guide", type=float, default=0.0, metavar="MIX",
                   help="weight each calibration token in the layer-wise loss by how much the float model's loss "
                        "depends on that layer's output there: (1 - MIX) + MIX * |dL/dy|^2 / mean (default 0: off; "
                        "0.5 lowered JLCM2's KLD by 5%% for 25-35%% more time; holds the model whole, like the "
                        "distillation; docs/METHOD.md)")
    s.add_argument("--groups", type=int, default=None, help="row groups per linear that learn one codebook together "
                                                            "(0: every row its own; default: 0 for JLCM2, 16 for "
                                                            "JLCM3, which per-row codebooks do not help; docs/METHOD.md)")
    s.add_argument("--distill-epochs", type=int, default=1, help="epochs of end-to-end distillation of block scales "
                                                                 "and norms (default 1; 0 skips it)")
    s.add_argument("--distill-seqs", type=int, default=None, metavar="N",
                   help="distil on N windows of --calib-len tokens: the calibration's and N minus those more from the "
                        "same text (default: 128 where the text holds them; 0: the calibration's alone). Time grows "
                        "with N; docs/METHOD.md")
    s.add_argument("--distill-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="the distillation's matmuls (default auto: bfloat16 where the device computes it in hardware, "
                        "AVX512-BF16 or AMX CPUs and CUDA GPUs; 2.3x faster at the same KLD there; docs/METHOD.md)")
    s.add_argument("--device", default="cpu", help="torch device for the learning (e.g. cuda)")
    s.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("inspect", help="per-tensor types, bytes and bpw of a GGUF, and JLCM codebook statistics")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--tensors", action="store_true", help="list every tensor")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="the scoreboard: stock types and JLCM rows measured side by side",
                       description="Quantize the model to the stock types (llama-quantize, imatrix) and convert it "
                                   "to each JLCM row, then measure every file in one run: size, whole-file and "
                                   "linear bpw, PPL and KLD against F16 (llama-perplexity), pp512/tg128 (one "
                                   "llama-bench run), quantization time and peak RAM. Writes the JSON, a PNG "
                                   "Pareto plot and a markdown table.")
    from .scoreboard import add_arguments
    add_arguments(s)
    s.set_defaults(func=cmd_bench)

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = p.parse_args(argv)
    args.argv = argv[1:]
    from .cache import AssetError
    from .convert import ConvertError
    from .gguf_io import GGUFFormatError
    from .llama_cpp import BuildError
    try:
        return args.func(args)
    except (AssetError, BuildError, ConvertError, GGUFFormatError) as e:
        print(f"jlcm-gguf: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            print(f"jlcm-gguf: out of disk space writing {e.filename or 'the output'} ({e.strerror}); "
                  "nothing was left behind; free space or choose another -o", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        # temporary files are gone by now (every writer cleans up on the way out); leave at once rather
        # than wait on the interpreter's shutdown, which torch's worker threads can stall after a signal
        print("jlcm-gguf: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
