"""The jlcm-gguf command line."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    from . import assets, llama_cpp
    t0 = time.time()
    f16 = assets.f16_reference()
    src = assets.model_gguf()
    assets.novels()
    b = llama_cpp.build(quiet=args.quiet)
    t1 = time.time()
    text = llama_cpp.generate(b, f16, args.prompt, args.n_predict, args.threads)
    t2 = time.time()
    print(f"\n{args.prompt}{text}\n")
    print("summary")
    print(f"  model      {assets.MODEL_NAME} (from {src.name}, {_human(src.stat().st_size)})")
    print(f"  reference  {f16.name}: {_human(f16.stat().st_size)} (F16, llama.cpp's converter)")
    print(f"  llama.cpp  {b.bin_dir}")
    print(f"  time       setup {t1 - t0:.0f}s, generation {t2 - t1:.1f}s")
    print("  the JLCM quantizer is not in this build yet: the demo runs the F16 reference")
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

    for name, func, helptext in (("generate", cmd_generate, "greedy generation with llama.cpp"),
                                 ("demo", cmd_demo, "fetch, build and generate on the default model")):
        s = sub.add_parser(name, help=helptext)
        if name == "generate":
            s.add_argument("-m", "--model", help="GGUF file (default: the F16 reference of the default model)")
        s.add_argument("-p", "--prompt", default=DEMO_PROMPT)
        s.add_argument("-n", "--n-predict", type=int, default=24)
        s.add_argument("-t", "--threads", type=int, default=2)
        s.add_argument("--quiet", action="store_true", help="less output while building")
        s.set_defaults(func=func)

    args = p.parse_args(argv)
    from .cache import AssetError
    from .llama_cpp import BuildError
    try:
        return args.func(args)
    except (AssetError, BuildError) as e:
        print(f"jlcm-gguf: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jlcm-gguf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
