"""`jlcm-gguf demo`: from nothing to the default model as a JLCM file answering in llama.cpp.

Every step caches its result (cache.cache_dir()), so a second run only
generates and measures: fetch the model and text, build the patched llama.cpp,
convert with the default settings, ask the F16 reference and the JLCM file the
same question, and compare size, bits per weight, perplexity/KLD on a slice
of the evaluation novel, and generation speed.
"""
from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import assets, cache, llama_cpp, scoreboard

DEMO_QUESTION = "What is the capital of France?"
DEMO_CHUNKS = 8          # 8 x 512 tokens of Pride and Prejudice: seconds per file, enough to rank files


def chat(question: str) -> str:
    """The default model is an instruct model: ask in its chat format (ChatML)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Timer:
    steps: list[tuple[str, float]] = field(default_factory=list)
    quiet: bool = False
    _t: float = field(default_factory=time.time)

    def start(self, what: str) -> None:
        self._t = time.time()
        if not self.quiet:
            print(f"jlcm-gguf demo: {what} ...", file=sys.stderr, flush=True)

    def done(self, name: str) -> None:
        self.steps.append((name, time.time() - self._t))


def converted_model(qtype: str, quiet: bool) -> Path:
    """The default model converted with the default settings; cached by the quantizer's source."""
    from . import convert
    out = cache.cache_dir() / "demo" / f"{assets.MODEL_NAME}-{qtype}-{scoreboard.source_digest()}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert.convert(assets.hf_model_dir(), out, convert.Options(qtype=qtype, quiet=quiet))
    return out


def measure_quality(build: llama_cpp.Build, f16: Path, model: Path, chunks: int, threads: int) -> dict:
    """PPL of both files and KLD of `model` against F16, on the first chunks of the evaluation novel."""
    ev = scoreboard.EvalSettings(assets.text_file(assets.EVAL_TEXT), 512, chunks, threads)
    runner = scoreboard.Runner(build, log=io.StringIO())
    base = cache.cache_dir() / "demo" / f"kld-base-{ev.text.stem}-c{ev.ctx}-n{chunks}.bin"
    base_ppl = base.with_suffix(".json")
    if not (base.exists() and base_ppl.exists()):
        tmp = cache.atomic_path(base)
        ref = scoreboard.perplexity(runner, f16, ev, tmp, is_base=True)
        tmp.replace(base)
        cache.write_json(base_ppl, ref)
    ref = json.loads(base_ppl.read_text())
    q = scoreboard.perplexity(runner, model, ev, base, is_base=False)
    return {"ppl_f16": ref["ppl"], "ppl": q["ppl"], "kld": q["kld"], "text": ev.text.name, "chunks": chunks}


def run(qtype: str = "JLCM2", question: str = DEMO_QUESTION, n_predict: int = 32, threads: int = 2,
        chunks: int = DEMO_CHUNKS, quiet: bool = False, model: Path | None = None, out=sys.stdout) -> int:
    """model: a JLCM GGUF of the default model to show instead of converting one."""
    t = Timer(quiet=quiet)
    t.start("fetching the model and the novels")
    src, f16 = assets.model_gguf(), assets.f16_reference()
    assets.novels()
    t.done("fetch")
    t.start("building the patched llama.cpp")
    build = llama_cpp.build(quiet=True)
    t.done("llama.cpp")
    if model is None:
        t.start(f"converting to {qtype} (default settings; cached after the first run)")
        model = converted_model(qtype, quiet)
        t.done("convert")
    else:
        qtype = "JLCM"
    t.start("generating")
    models = (("F16", f16), (qtype, model))
    answers = {name: llama_cpp.completion(build, path, chat(question), n_predict, threads).text
               for name, path in models}
    # A model that stops after two tokens has no meaningful speed: time n_predict tokens for both.
    speed = {name: llama_cpp.completion(build, path, chat(question), n_predict, threads,
                                        ignore_eos=True).tokens_per_second
             for name, path in models}
    t.done("generate")
    t.start(f"measuring perplexity and KLD on {chunks} x 512 tokens")
    quality = measure_quality(build, f16, model, chunks, threads)
    t.done("measure")

    stats = {name: scoreboard.tensor_stats(path) for name, path in models}
    w = out.write
    w(f"\nQ: {question}\n")
    for name, text in answers.items():
        w(f"{name:>6}: {text.strip()}\n")
    w("\nsummary\n")
    w(f"  model        {assets.MODEL_NAME} (shipped as {src.name}, {src.stat().st_size / 1e6:.1f} MB)\n")
    for name, path in models:
        s = stats[name]
        w(f"  {name:<12} {path.stat().st_size / 1e6:7.1f} MB  {s['bpw_file']:.2f} bpw whole file, "
          f"{s['bpw_linear']:.2f} bpw linear layers  ({path})\n")
    w(f"  size         {stats[qtype]['file_bytes'] / stats['F16']['file_bytes']:.2f} x F16\n")
    w(f"  perplexity   F16 {quality['ppl_f16']:.2f}, {qtype} {quality['ppl']:.2f} "
      f"({100 * (quality['ppl'] / quality['ppl_f16'] - 1):+.1f}%), KLD {quality['kld']:.3f} "
      f"({quality['text']}, {quality['chunks']} x 512 tokens)\n")
    w(f"  generation   F16 {speed['F16']:.1f} tok/s, {qtype} {speed[qtype]:.1f} tok/s "
      f"({n_predict} tokens, {threads} threads, llama-completion)\n")
    w("  time         " + ", ".join(f"{name} {sec:.0f}s" for name, sec in t.steps) + "\n")
    return 0
