"""The patched llama.cpp runs JLCM files: upstream's own tests with the new types, the real tools end to
end on the default model's JLCM file, the aarch64 build under qemu, and stock llama.cpp's clean refusal."""
import json
import platform
import re
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from jlcm_gguf import assets, llama_cpp

PROMPT = "The capital of France is"
# the model is an instruct model: asked in its chat format, it answers
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
# llama-perplexity (Q8_0 activations, F16 KV cache, its own float order) against the torch evaluation
# of the same dequantized weights in float32: measured 0.3% apart on this file; the bar leaves room
# for the summation order of other CPUs and nothing more.
PPL_TOLERANCE = 0.02
# the aarch64 build's perplexity against x86's on the same file: float order only (measured 0.05%)
ARM_PPL_TOLERANCE = 0.005
# x86's repack path (rows interleaved eight at a time) against the row-by-row vec_dot, token by token
# (-ub 1: the gemv, fed the same Q8_0 activations): float order only, measured 0.02% on a JLCM3 file.
# In batches ggml's repack path quantizes four activation rows at a time with its own routine, whose
# rounding differs: stock Q4_0 moves 0.8% between the paths on this text, JLCM3 0.5%.
REPACK_PPL_TOLERANCE = {"token": 0.002, "batch": 0.02}


@pytest.fixture(scope="module")
def arm():
    return llama_cpp.build("aarch64", quiet=True)


@pytest.fixture(scope="module")
def jlcm3_model(tmp_path_factory):
    """JLCM3 everywhere, learned on 4096 calibration tokens (the quick file of the other tests loses
    the answer: on this 135M model, a KLD above ~0.3 does, as stock IQ2_XS's 0.40 does for raw text)."""
    from conftest import run_cli
    out = tmp_path_factory.mktemp("jlcm3") / "smollm2-jlcm3.gguf"
    r = run_cli("convert", assets.hf_model_dir(), "-o", out, "--type", "jlcm3", "--outer-steps", "0",
                "--sweeps", "0", "--distill-epochs", "1", "--calib-tokens", "4096", "--calib-len", "512", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def run(argv, timeout=1800):
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_the_trees_kernels_are_csrc(build):
    """One source: the patched tree compiles the files of csrc/, byte for byte."""
    for name in llama_cpp.CSRC_FILES:
        tree = build.source / llama_cpp.TREE_KERNEL_DIR / name
        assert tree.read_bytes() == (llama_cpp.CSRC_DIR / name).read_bytes(), name


def test_build_key_follows_the_kernels(monkeypatch, tmp_path):
    key = llama_cpp.build_key("native")
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in llama_cpp.CSRC_FILES:
        (csrc / name).write_bytes((llama_cpp.CSRC_DIR / name).read_bytes())
    (csrc / "jlcm-x86.c").write_text("// drifted\n")
    monkeypatch.setattr(llama_cpp, "CSRC_DIR", csrc)
    assert llama_cpp.build_key("native") != key


def test_upstream_quantize_fns(build):
    r = run([str(build.tool("test-quantize-fns"))])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "Testing jlcm2" in r.stdout and "Testing jlcm3" in r.stdout


def test_upstream_backend_ops_on_cpu_for_jlcm(build):
    # every test case whose parameters name a JLCM type (the full suite runs for hours on 2 cores)
    r = run([str(build.tool("test-backend-ops")), "-b", "CPU", "-p", "jlcm"], timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "type_a=jlcm2" in r.stdout and "type_a=jlcm3" in r.stdout and "FAIL" not in r.stdout


def test_answers_coherently(build, jlcm3_model):
    text = llama_cpp.generate(build, jlcm3_model, CHAT, n_predict=16)
    assert "Paris" in text, text


def test_perplexity_agrees_with_torch(build, converted, novels, tmp_path):
    from jlcm_gguf import assets, evaluate
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from jlcm_gguf.convert import dequantize_all
    from jlcm_gguf.gguf_write import gguf_name, qk_row_order

    ctx, chunks = 512, 4
    out = run(build.command("llama-perplexity") + ["-m", str(converted), "-f", str(novels[assets.EVAL_TEXT]),
                                                    "-c", str(ctx), "--chunks", str(chunks), "-t", "2"])
    assert out.returncode == 0, out.stderr[-2000:]
    ppl_llama = float(out.stderr.split("Final estimate: PPL = ")[1].split()[0])

    hf = assets.hf_model_dir()
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    heads = {"attn_q": model.config.num_attention_heads, "attn_k": model.config.num_key_value_heads}
    sd = model.state_dict()
    tensors = dequantize_all(converted)
    for name in sd:
        if name == "lm_head.weight":
            continue                                  # tied to the embeddings
        w = tensors[gguf_name(name)]
        kind = gguf_name(name).split(".")[2] if name.startswith("model.layers.") else ""
        if kind in heads:                             # undo the converter's q/k row order
            w = w[np.argsort(qk_row_order(w.shape[0], heads[kind]))]
        sd[name].copy_(torch.from_numpy(w.reshape(sd[name].shape)))
    tok = AutoTokenizer.from_pretrained(hf)
    data = evaluate.eval_data(tok, novels[assets.EVAL_TEXT], ctx, chunks)
    ref = evaluate.reference(model, data, f"jlcm-check-{converted.stat().st_size}")
    ppl_torch = evaluate.evaluate(model, data, ref)["ppl"]
    assert abs(ppl_llama - ppl_torch) / ppl_torch < PPL_TOLERANCE, (ppl_llama, ppl_torch)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_answers_an_openai_completion(build, converted):
    port = free_port()
    proc = subprocess.Popen(build.command("llama-server") + ["-m", str(converted), "--port", str(port), "-c", "512",
                                                             "-t", "2", "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        req = urllib.request.Request(base + "/v1/completions", method="POST",
                                     data=json.dumps({"prompt": PROMPT, "max_tokens": 8, "temperature": 0}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            body = json.loads(r.read())
        assert body["choices"][0]["text"].strip(), body
        assert body["usage"]["completion_tokens"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bench_reports_pp_and_tg(build, converted):
    r = run(build.command("llama-bench") + ["-m", str(converted), "-p", "32", "-n", "8", "-r", "1", "-t", "2",
                                            "-o", "json"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert {(x["n_prompt"] > 0, x["n_gen"] > 0) for x in rows} == {(True, False), (False, True)}
    assert all(x["avg_ts"] > 0 and "JLCM2" in x["model_type"] for x in rows)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the repack path is x86 (AVX2) only")
def test_repack_path_agrees_with_vec_dot(build, converted, novels, tmp_path):
    """On x86 the JLCM2 and JLCM3 matrices run through ggml's repack path (csrc's gemv over rows
    interleaved eight at a time); --no-repack keeps the row-by-row vec_dot. Both give the file's
    perplexity, token by token to float rounding, in batches to the repack path's own rounding."""
    text = tmp_path / "short.txt"
    text.write_text(novels[assets.EVAL_TEXT].read_text(encoding="utf-8")[:8000], encoding="utf-8")
    for mode, batch in (("token", ["-ub", "1"]), ("batch", [])):
        ppl, logs = [], []
        for flags in ([], ["--no-repack"]):
            r = run(build.command("llama-perplexity") + ["-m", str(converted), "-f", str(text), "-c", "128",
                                                         "--chunks", "4", "-t", "2", "-v", *batch, *flags])
            assert r.returncode == 0, r.stderr[-2000:]
            ppl.append(float(r.stderr.split("Final estimate: PPL = ")[1].split()[0]))
            logs.append(r.stderr)
        assert "with jlcm2_8x8" in logs[0] and "with jlcm3_8x8" in logs[0]
        assert "repack tensor" not in logs[1]
        assert abs(ppl[0] - ppl[1]) / ppl[1] < REPACK_PPL_TOLERANCE[mode], (mode, ppl)


def test_aarch64_agrees_with_x86(arm, build, jlcm3_model, novels, tmp_path):
    """The aarch64 build (NEON kernels, under qemu) answers with the same greedy tokens, and its
    perplexity on 4 x 128 tokens lands within ARM_PPL_TOLERANCE of x86's. Both CPUs round differently
    everywhere (ggml's own kernels too); where a model's top tokens are close, as for the quick
    JLCM2 file's raw-text continuations (digits), greedy tokens may part. Measured on this file:
    25.684 (x86) against 25.696."""
    x86 = llama_cpp.generate(build, jlcm3_model, CHAT, n_predict=8)
    arm64 = llama_cpp.generate(arm, jlcm3_model, CHAT, n_predict=8)
    assert arm64 == x86 and "Paris" in x86
    text = tmp_path / "short.txt"
    text.write_text(novels[assets.EVAL_TEXT].read_text(encoding="utf-8")[:8000], encoding="utf-8")
    ppl = []
    for b in (build, arm):
        r = run(b.command("llama-perplexity") + ["-m", str(jlcm3_model), "-f", str(text), "-c", "128",
                                                 "--chunks", "4", "-t", "2"])
        assert r.returncode == 0, r.stderr[-2000:]
        ppl.append(float(r.stderr.split("Final estimate: PPL = ")[1].split()[0]))
    assert abs(ppl[1] - ppl[0]) / ppl[0] < ARM_PPL_TOLERANCE, ppl


def test_aarch64_upstream_tests_under_qemu(arm):
    r = run(arm.command("test-quantize-fns"))
    assert r.returncode == 0 and "Testing jlcm2" in r.stdout, r.stdout[-3000:]
    r = run(arm.command("test-backend-ops") + ["-b", "CPU", "-p", "jlcm"], timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "type_a=jlcm2" in r.stdout and "FAIL" not in r.stdout


def test_stock_llama_cpp_refuses_cleanly(converted):
    stock = llama_cpp.build(quiet=True, patched=False, targets=("llama-completion",))
    r = run(stock.command("llama-completion") + ["-m", str(converted), "-p", PROMPT, "-n", "4", "-no-cnv"])
    assert r.returncode > 0, r.returncode            # an error exit, not a signal
    assert re.search(r"tensor '[\w.]+' has invalid ggml type 20[01]", r.stderr), r.stderr[-2000:]
