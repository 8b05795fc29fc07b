"""The pinned llama.cpp: patched, built with the tools we use, and generating from the F16 reference."""
import re
import subprocess

import pytest

from jlcm_gguf import llama_cpp
from conftest import run_cli


def test_build_has_every_tool(build):
    for name in llama_cpp.TARGETS:
        assert build.tool(name).stat().st_size > 0
    out = subprocess.run(build.command("llama-cli") + ["--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "version" in (out.stdout + out.stderr)


def test_x86_build_pins_avx2_and_no_avx512_or_amx():
    opts = llama_cpp.build_options("native")
    assert "-DGGML_NATIVE=OFF" in opts and "-DGGML_AVX2=ON" in opts
    assert "-DGGML_AVX512=OFF" in opts and "-DGGML_AMX_INT8=OFF" in opts


def test_build_key_follows_patches_and_arch(tmp_path, monkeypatch):
    key = llama_cpp.build_key("native")
    assert key != llama_cpp.build_key("aarch64")
    (tmp_path / "series").write_text("0001-x.patch\n")
    (tmp_path / "0001-x.patch").write_text("--- a/x\n+++ b/x\n")
    monkeypatch.setattr(llama_cpp, "PATCH_DIR", tmp_path)
    assert llama_cpp.build_key("native") != key


def test_a_patch_that_does_not_apply_fails_loudly(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ggml.h").write_text("int a;\nint b;\nint c;\n")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "series").write_text("# comment\n0001-change.patch\n")
    # context line 'int x;' is not in the file: git apply refuses instead of fuzzing
    (patches / "0001-change.patch").write_text(
        "--- a/ggml.h\n+++ b/ggml.h\n@@ -1,3 +1,3 @@\n int a;\n-int x;\n+int y;\n int c;\n")
    monkeypatch.setattr(llama_cpp, "PATCH_DIR", patches)
    with pytest.raises(llama_cpp.BuildError, match="0001-change.patch does not apply"):
        llama_cpp._apply_patches(tree)
    (patches / "0001-change.patch").write_text(
        "--- a/ggml.h\n+++ b/ggml.h\n@@ -1,3 +1,3 @@\n int a;\n-int b;\n+int y;\n int c;\n")
    llama_cpp._apply_patches(tree)
    assert (tree / "ggml.h").read_text() == "int a;\nint y;\nint c;\n"


def test_source_tree_is_the_pinned_commit(build):
    src = build.source
    assert (src / "convert_hf_to_gguf.py").exists()
    assert (src / "ggml" / "include" / "ggml.h").exists()
    assert not (src / ".git").exists()


def test_completion_says_paris(build, f16):
    text = llama_cpp.generate(build, f16, "The capital of France is", n_predict=8)
    assert "Paris" in text.split(".")[0], text


def test_llama_cli_single_turn_answers_paris(build, f16):
    r = subprocess.run(build.command("llama-cli") + ["-m", str(f16), "-p", "What is the capital of France?",
                       "-st", "-n", "24", "--temp", "0", "-t", "2", "-c", "512", "--no-warmup", "--simple-io"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, errors="replace")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Paris" in r.stdout


def test_cli_generate_rejects_a_missing_model(tmp_path):
    r = run_cli("generate", "-m", tmp_path / "nope.gguf")
    assert r.returncode == 2 and "does not exist (--model)" in r.stderr


def test_cli_llama_cpp_path_prints_the_build(build):
    r = run_cli("llama-cpp", "path")
    assert r.returncode == 0 and r.stdout.strip() == str(build.bin_dir)


def test_demo_runs_end_to_end(build, f16, converted):
    """The demo's path after its (cached) conversion, on the quick file: both models answer, and the
    summary compares them. The F16 model's answer is fixed (greedy); the quick file's is not judged."""
    r = run_cli("demo", "-m", converted, "-n", "8", "--chunks", "2", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Q: What is the capital of France?" in r.stdout
    assert re.search(r"^\s*F16: The capital of France is Paris", r.stdout, re.M), r.stdout
    assert re.search(r"^\s*JLCM: \S", r.stdout, re.M), r.stdout
    ppl = re.search(r"perplexity\s+F16 ([0-9.]+), JLCM ([0-9.]+) \(([-+0-9.]+)%\), KLD ([0-9.]+)", r.stdout)
    assert ppl, r.stdout
    f16_ppl, q_ppl, _, kld = map(float, ppl.groups())
    assert q_ppl > f16_ppl and kld > 0
    assert re.search(r"generation\s+F16 [0-9.]+ tok/s, JLCM [0-9.]+ tok/s", r.stdout)
    size = float(re.search(r"size\s+([0-9.]+) x F16", r.stdout).group(1))
    assert size < 0.5


def test_demo_refuses_a_missing_model():
    r = run_cli("demo", "-m", "/nonexistent.gguf", "--quiet")
    assert r.returncode == 2 and "--model" in r.stderr


def test_aarch64_cross_build_generates_under_qemu(f16):
    """The same greedy continuation from the aarch64 (armv8.2-a+dotprod) build, run by qemu-aarch64."""
    arm = llama_cpp.build("aarch64", quiet=True)
    assert arm.command("llama-completion")[0] == "qemu-aarch64"
    text = llama_cpp.generate(arm, f16, "The capital of France is", n_predict=4)
    assert "Paris" in text, text
