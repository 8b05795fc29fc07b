"""csrc/ built outside Python: aarch64 under qemu (dotprod, and plain NEON on a Cortex-A53 without
dotprod) and an ASan + UBSan build, each running csrc/test-jlcm.c on the numpy reference's vectors."""
import platform
import subprocess

import pytest

from jlcm_gguf import llama_cpp

from conftest import ROOT
from kernel_vectors import vector_records, write_vectors

CSRC = ROOT / "csrc"
SOURCES = ["test-jlcm.c", *(f for f in llama_cpp.CSRC_FILES if f.endswith(".c"))]
WARN = ["-std=c11", "-Wall", "-Wextra", "-Werror"]

BUILDS = {
    # name: (compiler, flags, runner, SIMD path the binary must report)
    "aarch64-dotprod": ("aarch64-linux-gnu-gcc", ["-O2", "-march=armv8.2-a+dotprod", "-static"],
                        ["qemu-aarch64"], "neon-dotprod"),
    "aarch64-neon-a53": ("aarch64-linux-gnu-gcc", ["-O2", "-march=armv8-a", "-static"],
                         ["qemu-aarch64", "-cpu", "cortex-a53"], "neon"),
    "x86-asan-ubsan": ("gcc", ["-O1", "-g", "-march=native", "-fsanitize=address,undefined",
                               "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"], [], None),
}


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    path = tmp_path_factory.mktemp("vectors") / "vectors.bin"
    write_vectors(path, vector_records())
    return path


def build(name, tmp_path):
    cc, flags, runner, _ = BUILDS[name]
    if runner:
        llama_cpp.check_cross_toolchain()
    exe = tmp_path / f"test-jlcm-{name}"
    r = subprocess.run([cc, *flags, *WARN, "-o", str(exe), *[str(CSRC / s) for s in SOURCES], "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [*runner, str(exe)]


@pytest.mark.parametrize("name", list(BUILDS))
def test_c_driver(name, vectors, tmp_path):
    if name.startswith("x86") and platform.machine() != "x86_64":
        pytest.skip("x86 build")
    r = subprocess.run([*build(name, tmp_path), str(vectors)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    want = BUILDS[name][3] or ("avx2" if "avx2" in open("/proc/cpuinfo").read() else "none")
    assert f"simd: {want}\n" in r.stdout
    assert " 0 failures" in r.stdout and "vectors: " in r.stdout


def test_dotprod_build_really_uses_dotprod(tmp_path):
    """The dotprod binary dies with SIGILL on a core without the extension: its sdot path is what ran."""
    r = subprocess.run(["qemu-aarch64", "-cpu", "cortex-a53", build("aarch64-dotprod", tmp_path)[-1]],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "Illegal instruction" in r.stderr
