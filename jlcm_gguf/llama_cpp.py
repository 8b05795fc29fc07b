"""The pinned llama.cpp: fetch its source, apply patches/, build and locate the tools.

The source is the tree vendored in the llama-cpp-python 0.3.36 sdist (llama.cpp
commit 0c1e57098bba). Builds are cached under the user cache, keyed by the
sdist's checksum, the patch set's hash, the architecture and the build options,
so a change to any of them builds afresh and nothing else does.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from . import cache
from .cache import AssetError

SDIST_PROJECT = "llama-cpp-python"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
LLAMA_CPP_COMMIT = "0c1e57098bba"

PATCH_DIR = Path(__file__).resolve().parent.parent / "patches"
# The kernels: csrc/ is their one source. Applying the patches copies these files into the
# tree as ggml/src/jlcm/, where the patched CMake files compile them into ggml.
CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"
CSRC_FILES = ("jlcm.h", "jlcm-impl.h", "jlcm-half-table.h", "jlcm-ref.c", "jlcm-x86.c", "jlcm-arm.c", "jlcm.c")
TREE_KERNEL_DIR = Path("ggml") / "src" / "jlcm"

TARGETS = (
    "llama-cli", "llama-completion", "llama-server", "llama-perplexity", "llama-imatrix",
    "llama-quantize", "llama-bench", "test-quantize-fns", "test-backend-ops",
)

COMMON_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",       # static tools: the cache entry can move and still run
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",   # it would download the web UI; only PyPI and Debian are reachable
    "-DLLAMA_BUILD_TESTS=ON",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_OPENMP=ON",
)

# An explicit AVX2 level: a native build on these hosts compiles AMX code that dies with SIGILL.
X86_OPTIONS = (
    "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
    "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
)

AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_PACKAGES = ("gcc-aarch64-linux-gnu", "g++-aarch64-linux-gnu", "qemu-user")
AARCH64_OPTIONS = (
    "-DCMAKE_SYSTEM_NAME=Linux",
    "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
    f"-DCMAKE_C_COMPILER={AARCH64_TRIPLE}-gcc",
    f"-DCMAKE_CXX_COMPILER={AARCH64_TRIPLE}-g++",
    "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod",
    "-DGGML_OPENMP=OFF",
)

ARCHES = ("native", "aarch64")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Build:
    arch: str
    source: Path
    bin_dir: Path

    def tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.exists():
            raise BuildError(f"{name} was not built in {self.bin_dir}")
        return path

    def command(self, name: str) -> list[str]:
        """argv prefix that runs a tool, through qemu for a cross build."""
        exe = str(self.tool(name))
        if self.arch == "aarch64" and platform.machine() != "aarch64":
            return ["qemu-aarch64", "-L", f"/usr/{AARCH64_TRIPLE}", exe]
        return [exe]


def patch_series(patched: bool = True) -> list[Path]:
    """The patches, in order; none for the stock build (patched=False)."""
    series = PATCH_DIR / "series"
    if not patched:
        return []
    if not series.exists():
        return []
    names = [ln.strip() for ln in series.read_text().splitlines()]
    return [PATCH_DIR / n for n in names if n and not n.startswith("#")]


def patch_hash(patched: bool = True) -> str:
    """Hash of the patch series and of the kernel files it compiles (both shape the build)."""
    h = hashlib.sha256()
    for p in patch_series(patched):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    if patch_series(patched):
        for name in CSRC_FILES:
            h.update(name.encode() + b"\0" + (CSRC_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()[:12]


def build_options(arch: str) -> tuple[str, ...]:
    if arch == "native":
        if platform.machine() in ("x86_64", "AMD64"):
            return COMMON_OPTIONS + X86_OPTIONS
        return COMMON_OPTIONS + ("-DGGML_NATIVE=ON",)
    if arch == "aarch64":
        return COMMON_OPTIONS + AARCH64_OPTIONS
    raise BuildError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHES)}")


def build_key(arch: str, patched: bool = True, targets: tuple[str, ...] = TARGETS) -> str:
    opts = hashlib.sha256("\n".join(build_options(arch) + targets).encode()).hexdigest()[:8]
    return f"{SDIST_SHA256[:12]}-p{patch_hash(patched)}-{arch}-{opts}"


def fetch_sdist() -> Path:
    return cache.fetch_pypi_file(SDIST_PROJECT, SDIST_FILE, SDIST_SHA256,
                                 "the llama-cpp-python 0.3.36 sdist", "JLCM_GGUF_CACHE (a cache holding it)")


def _extract(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(SDIST_PREFIX):
                continue
            m.name = m.name[len(SDIST_PREFIX):]
            if m.name == ".git":  # a submodule pointer into the sdist's .git; useless once extracted
                continue
            members.append(m)
        tar.extractall(dest, members=members, filter="data")


def _apply_patches(tree: Path, patched: bool = True) -> None:
    if patch_series(patched):
        dest = tree / TREE_KERNEL_DIR
        dest.mkdir(parents=True, exist_ok=True)
        for name in CSRC_FILES:
            shutil.copyfile(CSRC_DIR / name, dest / name)
    for patch in patch_series(patched):
        if not patch.exists():
            raise BuildError(f"patches/series names {patch.name}, which does not exist")
        # git apply never fuzzes: a patch whose context has drifted is refused, not bent to fit.
        for check in (["--check"], []):
            r = subprocess.run(["git", "apply", *check, "--whitespace=nowarn", str(patch)],
                               cwd=tree, capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"patch {patch.name} does not apply to llama.cpp {LLAMA_CPP_COMMIT}:\n{r.stderr}")


def source_tree(patched: bool = True) -> Path:
    """The pristine sdist tree with the patch series applied; extracted once per patch set."""
    root = cache.cache_dir() / "llama.cpp"
    dest = root / f"src-{SDIST_SHA256[:12]}-p{patch_hash(patched)}"
    with cache.locked(dest.name):
        if (dest / ".jlcm-complete").exists():
            return dest
        sdist = fetch_sdist()
        tmp = root / f".{dest.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        _extract(sdist, tmp)
        _apply_patches(tmp, patched)
        (tmp / ".jlcm-complete").write_text(json.dumps({"patches": [p.name for p in patch_series(patched)]}))
        cache.commit_dir(tmp, dest)
    return dest


def check_cross_toolchain() -> None:
    missing = [t for t in (f"{AARCH64_TRIPLE}-gcc", f"{AARCH64_TRIPLE}-g++", "qemu-aarch64") if not shutil.which(t)]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(AARCH64_PACKAGES)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", *AARCH64_PACKAGES])
        if r.returncode == 0:
            return
    raise BuildError(f"the aarch64 cross build needs {', '.join(missing)}: "
                     f"install the Debian packages {' '.join(AARCH64_PACKAGES)}")


def build(arch: str = "native", quiet: bool = False, patched: bool = True,
          targets: tuple[str, ...] = TARGETS) -> Build:
    """Build (or find in the cache) the tools for arch and return where they are.
    patched=False builds stock llama.cpp (the refusal test needs one)."""
    options = build_options(arch)
    for tool in ("cmake", "git", "c++" if arch == "native" else "true"):
        if not shutil.which(tool):
            raise BuildError(f"building llama.cpp needs {tool} on PATH")
    if arch == "aarch64":
        check_cross_toolchain()
    src = source_tree(patched)
    build_dir = cache.cache_dir() / "llama.cpp" / f"build-{build_key(arch, patched, targets)}"
    result = Build(arch, src, build_dir / "bin")
    stamp = build_dir / ".jlcm-complete"
    with cache.locked(build_dir.name):
        if stamp.exists():
            return result
        out = subprocess.DEVNULL if quiet else None
        jobs = str(os.cpu_count() or 2)
        steps = [
            ["cmake", "-S", str(src), "-B", str(build_dir), "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles", *options],
            ["cmake", "--build", str(build_dir), "-j", jobs, "--target", *targets],
        ]
        for step in steps:
            r = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT if quiet else None)
            if r.returncode != 0:
                raise BuildError(f"llama.cpp build step failed ({r.returncode}): {' '.join(step)}")
        for t in targets:
            result.tool(t)
        stamp.write_text(json.dumps({"arch": arch, "options": options, "targets": targets,
                                     "patches": [p.name for p in patch_series(patched)]}, indent=1))
    return result


def find_build(arch: str = "native") -> Build | None:
    """The cached (patched) build for the current sources and patches, if there is one; never builds."""
    build_dir = cache.cache_dir() / "llama.cpp" / f"build-{build_key(arch)}"
    if not (build_dir / ".jlcm-complete").exists():
        return None
    return Build(arch, source_tree(), build_dir / "bin")


@dataclass
class Completion:
    text: str                  # the generated text only
    tokens_per_second: float   # generation speed, from llama-completion's own timing line


_EVAL_SPEED = re.compile(r"perf_print:\s+eval time =.*?([0-9.]+) tokens per second")


def completion(build: Build, model: Path, prompt: str, n_predict: int = 16, threads: int = 2,
               seed: int = 0, ignore_eos: bool = False) -> Completion:
    """Greedy raw continuation of prompt with llama-completion. ignore_eos makes it generate all
    n_predict tokens, so that its speed does not depend on when a model chooses to stop."""
    argv = build.command("llama-completion") + [
        "-m", str(model), "-p", prompt, "-n", str(n_predict), "-t", str(threads),
        "--temp", "0", "--seed", str(seed), "-no-cnv", "--no-display-prompt", "--no-warmup", "-c", "512",
    ] + (["--ignore-eos"] if ignore_eos else [])
    r = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BuildError(f"llama-completion failed ({r.returncode}):\n{r.stderr[-2000:]}")
    speed = [float(m) for m in _EVAL_SPEED.findall(r.stderr)]
    return Completion(r.stdout, speed[-1] if speed else float("nan"))


def generate(build: Build, model: Path, prompt: str, n_predict: int = 16, threads: int = 2,
             seed: int = 0) -> str:
    """Greedy raw continuation of prompt with llama-completion; returns the generated text only."""
    return completion(build, model, prompt, n_predict, threads, seed).text
