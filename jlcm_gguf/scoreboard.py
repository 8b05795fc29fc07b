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


def quantize(runner: Runner, src: Path, out: Path, qtype: str, imat: Path | None, threads: int = 2) -> Path:
    if out.exists():
        return out
    tmp = cache.atomic_path(out)
    args = (["--imatrix", imat] if imat else []) + [src, tmp, qtype, threads]
    runner.run("llama-quantize", args)
    os.replace(tmp, out)
    return out


_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_KLD = re.compile(r"Mean\s+KLD:\s+([-0-9.]+)\s+±\s+([0-9.]+)")


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
    kld = _KLD.search(out)
    if not (ppl and kld):
        raise RuntimeError(f"no PPL/KLD in llama-perplexity output:\n{out[-2000:]}")
    return {"ppl": float(ppl.group(1)), "ppl_err": float(ppl.group(2)),
            "kld": float(kld.group(1)), "kld_err": float(kld.group(2))}


def bench(runner: Runner, models: list[Path], threads: int = 2, reps: int = 3) -> dict[Path, dict]:
    """pp512 and tg128 for all files in one llama-bench run, so they share the machine's state."""
    args = []
    for m in models:
        args += ["-m", m]
    args += ["-p", 512, "-n", 128, "-t", threads, "-r", reps, "-o", "json"]
    out = runner.run("llama-bench", args)
    start = out.index("[")
    rows = json.loads(out[start:out.rindex("]") + 1])
    result: dict[Path, dict] = {Path(m): {} for m in models}
    for r in rows:
        key = "pp512" if r["n_prompt"] == 512 and r["n_gen"] == 0 else "tg128"
        result[Path(r["model_filename"])][key] = round(r["avg_ts"], 2)
    return result


# --- the scoreboard ----------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 2**30, 1),
            "os": platform.platform(), "python": platform.python_version(),
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
        entries.append(Entry(t, "stock", path, {"nominal": t}))
    return entries


# JLCM rows: `jlcm-gguf convert` with its default settings and these flags
JLCM_ROWS = {"JLCM2": ("--type", "jlcm2"), "JLCM3": ("--type", "jlcm3")}


def source_digest() -> str:
    """Hash of the quantizer's source: a cached conversion is reused only by the code that made it."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:10]


def jlcm_entries(runner: Runner, model: Path, work: Path, names) -> list[Entry]:
    """Convert the default model (or `model`) for each named JLCM row; conversions are cached in work."""
    entries = []
    for name in names:
        if name not in JLCM_ROWS:
            raise ValueError(f"unknown JLCM row {name!r}; choose from {', '.join(JLCM_ROWS)}")
        out = work / f"{model.name}-{name}-{source_digest()}.gguf"
        cmd = [sys.executable, "-m", "jlcm_gguf.cli", "convert", str(model), "-o", str(out), *JLCM_ROWS[name], "--quiet"]
        runner.commands.append(shlex.join(["jlcm-gguf", *cmd[3:]]))
        if not out.exists():
            t0 = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"jlcm-gguf convert failed:\n{r.stderr[-2000:]}")
            print(f"  converted {name} in {time.time() - t0:.0f}s", file=runner.log, flush=True)
        entries.append(Entry(name, "jlcm", out, {"nominal": name}))
    return entries


def merge_rows(path: Path, header: dict, rows: list[dict]) -> dict:
    """Replace rows of the same name in an existing results file, keep the others (JLCM rows too)."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    names = {r["name"] for r in rows}
    kept = [r for r in doc.get("rows", []) if r["name"] not in names]
    commands = [c for c in doc.get("commands", []) if c not in header.get("commands", [])]
    doc.update(header)
    doc["commands"] = commands + header.get("commands", [])
    doc["rows"] = kept + rows
    cache.write_json(path, doc)
    return doc


def markdown_table(doc: dict) -> str:
    """The scoreboard as a markdown table, in the JSON's row order."""
    def fmt(v, spec):
        return "—" if v is None else format(v, spec)
    lines = ["| type | kind | file MB | bpw file | bpw linear | PPL | KLD | pp512 t/s | tg128 t/s | linear fallbacks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        fb = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r.get("fallbacks", {}).items()) or "—"
        lines.append(f"| {r['name']} | {r['kind']} | {r['file_bytes'] / 1e6:.2f} | {r['bpw_file']:.2f} | "
                     f"{r['bpw_linear']:.2f} | {r['ppl']:.3f} | {r['kld']:.4f} | {fmt(r.get('pp512'), '.1f')} | "
                     f"{fmt(r.get('tg128'), '.1f')} | {fb} |")
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
