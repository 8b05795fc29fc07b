#!/usr/bin/env python3
"""vec_dot cost of the JLCM kernels beside llama.cpp's own, measured on x86 and modelled for phone cores.

    python bench/kernel_speed.py [--out bench/results/kernels.json]

(Not bench/kernels.py: a script's folder comes first on sys.path, and that name shadowed the
`kernels` package that transformers imports, so every bench script that loads a model failed.)

x86: bench/kernels_bench.c, built with the pinned llama.cpp's x86 flags (AVX2,
FMA, F16C; -O3) and linked to that build's static ggml, times every kernel in
one process, rounds interleaved: ns per 256 weights (median of 301 rounds, one
thread, 32 rows of 4096 weights, so the weights sit in L2). Two rows more time
the layouts of llama.cpp's repack path, where one gemv call does all 32 rows
eight at a time: JLCM2X8 and JLCM3X8 (csrc's gemv_jlcm2x8_q8_0 and
gemv_jlcm3x8_q8_0) and Q4_0X8 (ggml's
ggml_gemv_q4_0_8x8_q8_0, the layout the Q4_0 file runs in on this machine).
Three rows with path "gemm" time the same layouts through the gemm that prompt
processing calls, four activation rows per call (ggml's block_q8_0x4, from
ggml_quantize_mat_q8_0_4x8): ns per 256 weights and activation row.

ARM: the NEON inner loops of csrc/jlcm-arm.c and of the pinned ggml's
arch/arm/quants.c, compiled with the aarch64 build's flags
(-O3 -march=armv8.2-a+dotprod, aarch64-linux-gnu-gcc), cut out of the assembly
and run through llvm-mca 19 (Debian's llvm-19) for Cortex-A76 and Cortex-A55:
cycles per 256 weights. The A76 runs on LLVM's Neoverse N1 model (the A76's
server sibling): LLVM itself moved -mcpu=cortex-a76 onto that model in 2026;
before that, and in every llvm-mca Debian ships, -mcpu=cortex-a76 runs the
Cortex-A57 model (3 uops dispatched a cycle, a different machine). A loop's
weights are 16 per sdot it holds; a superblock type's outer loop (256 weights)
counts its inner loop once per trip.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jlcm_gguf import cache, llama_cpp, scoreboard  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CSRC = ROOT / "csrc"
KERNEL_SOURCES = [f for f in llama_cpp.CSRC_FILES if f.endswith(".c")]
X86_FLAGS = ["-O3", "-DNDEBUG", "-msse4.2", "-mf16c", "-mfma", "-mbmi2", "-mavx", "-mavx2"]   # ggml's, for this build
ARM_CC = "aarch64-linux-gnu-gcc"
ARM_FLAGS = ["-O3", "-DNDEBUG", "-march=armv8.2-a+dotprod"]
# target -> the llvm-mca model that stands for it
CORES = {"cortex-a76": "neoverse-n1", "cortex-a55": "cortex-a55"}
LLVM_MCA = "llvm-mca-19"
# function in the assembly -> (type name, weights one pass of its outermost loop covers, or None: 16 per sdot)
ARM_KERNELS = {
    "vec_dot_jlcm2_q8_0_simd": ("JLCM2", None),
    "vec_dot_jlcm3_q8_0_simd": ("JLCM3", None),
    "ggml_vec_dot_q4_0_q8_0": ("Q4_0", None),
    "ggml_vec_dot_iq4_nl_q8_0": ("IQ4_NL", None),
    "ggml_vec_dot_iq2_xs_q8_K": ("IQ2_XS", 256),
}
MCA_ITERATIONS = 200


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr}")
    return r


# -- x86: measured ----------------------------------------------------------------------------
def x86_rows(work: Path, commands: list) -> list[dict]:
    build = llama_cpp.build("native", quiet=True)
    src = build.source
    libs = build.bin_dir.parent / "ggml" / "src"
    exe = work / "kernels_bench"
    cmd = ["gcc", *X86_FLAGS, "-fopenmp", "-std=c11", f"-I{CSRC}", f"-I{src / 'ggml' / 'include'}", "-o", str(exe),
           str(ROOT / "bench" / "kernels_bench.c"), *[str(CSRC / s) for s in KERNEL_SOURCES],
           str(libs / "libggml-cpu.a"), str(libs / "libggml-base.a"), "-lstdc++", "-lm", "-lpthread"]
    run(cmd)
    commands += [shlex.join(cmd), str(exe)]
    out = json.loads(run([str(exe)]).stdout)
    return [{"type": k["type"].upper(), "target": "x86-avx2", "path": k["path"],
             "cost_per_256": k["ns_per_256"], "p10": k["ns_per_256_p10"], "p90": k["ns_per_256_p90"], "unit": "ns"}
            for k in out["kernels"]]


# -- ARM: modelled ----------------------------------------------------------------------------
def functions(asm: str) -> dict[str, list[str]]:
    funcs, cur = {}, None
    for line in asm.split("\n"):
        m = re.match(r"^([A-Za-z_]\w*):", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
        elif cur is not None:
            funcs[cur].append(line)
    return funcs


BRANCH = re.compile(r"^\s*(b|b\.?(?:eq|ne|gt|ge|lt|le|hi|hs|lo|ls|mi|pl|cs|cc)|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.L\w+)\s*$")


def instructions(lines: list[str]) -> list[str]:
    return [x for x in lines if x.strip() and not x.strip().startswith(".") and not re.match(r"^\.L\w+:", x)]


def loops(body: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of every loop: a label and a later branch back to it."""
    labels = {m.group(1): i for i, line in enumerate(body) if (m := re.match(r"^(\.L\w+):", line))}
    return [(labels[m.group(2)], i) for i, line in enumerate(body)
            if (m := BRANCH.match(line)) and m.group(2) in labels and labels[m.group(2)] < i]


def check_llvm_mca() -> None:
    if shutil.which(LLVM_MCA) is None:
        raise SystemExit(f"{LLVM_MCA} not found: the A76 figures need its Neoverse N1 model "
                         "(apt-get install llvm-19)")


def mca_cycles(lines: list[str], cpu: str) -> float:
    out = run([LLVM_MCA, "-mtriple=aarch64", f"-mcpu={CORES[cpu]}", f"-iterations={MCA_ITERATIONS}"],
              input="\n".join(instructions(lines))).stdout
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / MCA_ITERATIONS


def sdots(lines: list[str]) -> int:
    return sum(1 for x in instructions(lines) if x.split()[0] == "sdot")


def loop_cost_per_256(body: list[str], weights: int | None, cpu: str) -> float:
    """Cycles per 256 weights of the loop that holds the function's dot products."""
    spans = [s for s in loops(body) if sdots(body[s[0]:s[1] + 1]) > 0]
    outer = max(spans, key=lambda s: (sdots(body[s[0]:s[1] + 1]), s[1] - s[0]))
    inner = [s for s in spans if s != outer and outer[0] <= s[0] and s[1] <= outer[1]]
    lines = body[outer[0]:outer[1] + 1]
    if not inner:
        per_pass = weights or 16 * sdots(lines)
        return mca_cycles(lines, cpu) * 256 / per_pass
    a, b = max(inner, key=lambda s: s[1] - s[0])
    inner_lines = body[a:b + 1]
    rest = body[outer[0]:a] + body[b + 1:outer[1] + 1]
    trips = (weights - 16 * sdots(rest)) // (16 * sdots(inner_lines))
    return (trips * mca_cycles(inner_lines, cpu) + mca_cycles(rest, cpu)) * 256 / weights


def arm_rows(work: Path, commands: list) -> list[dict]:
    llama_cpp.check_cross_toolchain()
    check_llvm_mca()
    ggml = llama_cpp.source_tree() / "ggml" / "src"
    sources = {"jlcm": (CSRC / "jlcm-arm.c", [f"-I{CSRC}"]),
               "ggml": (ggml / "ggml-cpu" / "arch" / "arm" / "quants.c",
                        ["-D_GNU_SOURCE", f"-I{ggml.parent}", f"-I{ggml}", f"-I{ggml / 'ggml-cpu'}",
                         f"-I{ggml.parent / 'include'}"])}
    funcs = {}
    for name, (src, inc) in sources.items():
        asm = work / f"{name}.s"
        cmd = [ARM_CC, "-S", *ARM_FLAGS, *inc, "-o", str(asm), str(src)]
        run(cmd)
        commands.append(shlex.join(cmd))
        funcs.update(functions(asm.read_text()))
    commands.append(f"{LLVM_MCA} -mtriple=aarch64 -mcpu=<model> -iterations={MCA_ITERATIONS} <loop>")
    rows = []
    for fn, (tname, weights) in ARM_KERNELS.items():
        for cpu in CORES:
            rows.append({"type": tname, "target": cpu, "mca_model": CORES[cpu], "function": fn,
                         "cost_per_256": round(loop_cost_per_256(funcs[fn], weights, cpu), 2), "unit": "cycles"})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for target in sorted({r["target"] for r in rows}):
        cost = {r["type"]: r["cost_per_256"] for r in rows if r["target"] == target and r.get("path") != "gemm"}
        gemm = {r["type"]: r["cost_per_256"] for r in rows if r["target"] == target and r.get("path") == "gemm"}
        for t in ("JLCM2", "JLCM3"):
            out.append({"type": t, "target": target,
                        "vs_IQ4_NL": round(cost["IQ4_NL"] / cost[t], 3),     # > 1: faster than IQ4_NL
                        "vs_IQ2_XS": round(cost["IQ2_XS"] / cost[t], 3)})    # bar: >= 2
        for t in ("JLCM2", "JLCM3"):   # llama.cpp's repack path: eight rows per pass, Q4_0 likewise
            if f"{t}X8" in cost:
                out.append({"type": f"{t}X8", "target": target, "vs_Q4_0X8": round(cost["Q4_0X8"] / cost[f"{t}X8"], 3),
                            "vs_own_vec_dot": round(cost[t] / cost[f"{t}X8"], 3)})
            if f"{t}X8" in gemm:    # prompts: four activation rows per call, cost per activation row
                out.append({"type": f"{t}X8", "path": "gemm", "target": target,
                            "vs_Q4_0X8_gemm": round(gemm["Q4_0X8"] / gemm[f"{t}X8"], 3),
                            "vs_own_gemv": round(cost[f"{t}X8"] / gemm[f"{t}X8"], 3)})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS / "kernels.json")
    args = p.parse_args()
    commands = ["python bench/kernel_speed.py " + shlex.join(sys.argv[1:])]
    with tempfile.TemporaryDirectory() as tmp:
        rows = x86_rows(Path(tmp), commands) + arm_rows(Path(tmp), commands)
    result = {"machine": scoreboard.machine_info(), "commands": commands,
              "llama_cpp": llama_cpp.LLAMA_CPP_COMMIT, "rows": rows, "speed_ratios": ratios(rows),
              "note": "x86: measured ns (median; p10/p90 beside it); cortex-*: llvm-mca cycles of the NEON inner loop "
                      "(mca_model: the llvm-mca 19 model run for the target)"}
    cache.write_json(args.out, result)
    for r in rows:
        print(f"{r['target']:11s} {r['type']:8s} {r['cost_per_256']:8.2f} {r['unit']}")
    for r in result["speed_ratios"]:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
