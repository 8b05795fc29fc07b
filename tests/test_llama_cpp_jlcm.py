"""The patched llama.cpp runs JLCM files: upstream's own tests with the new types, the real tools end to
end on the default model's JLCM file, the aarch64 build under qemu, and stock llama.cpp's clean refusal."""
import json
import platform
import re
import socket
import struct
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from jlcm_gguf import assets, llama_cpp, scoreboard

PROMPT = "The capital of France is"
# the model is an instruct model: asked in its chat format, it answers
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
# llama-perplexity (Q8_0 activations, F16 KV cache, its own float order) against the torch evaluation
# of the same dequantized weights in float32: measured 0.3% apart on this file; the bar leaves room
# for the summation order of other CPUs and nothing more.
PPL_TOLERANCE = 0.02
# Two paths that differ in float order alone still part by a small KLD: ulp-sized differences flip
# the next layer's Q8_0 activation rounding and the F16 KV cache's now and then, and those whole
# quantization steps travel on. The patched tool measures that floor on each file: the same kernels
# (vec_dot) token by token against in batches, which differ in attention's and ggml's summation order.
# Measured on this host's quick JLCM2 file: floor 0.0053; the repack path 0.0047 (token) and 0.0050
# (batch); stock Q4_0's repack path 0.0040 against its floor 0.0043. Faults put into the same file
# measure 0.012 (eight rows of one layer's attn_v swapped with the next eight) and 0.068 (the first
# block of every row of one ffn_up read from the second): a path that errs in every tensor lies far above.
FLOAT_ORDER_KLD_FACTOR = 2.0
FLOAT_ORDER_KLD_MIN = 1e-3


@pytest.fixture(scope="module")
def arm():
    return llama_cpp.build("aarch64", quiet=True)


@pytest.fixture(scope="module")
def jlcm3_model(tmp_path_factory):
    """JLCM3 everywhere, learned on 4096 calibration tokens with no outer steps or sweeps: the quick
    JLCM2 file ends the assistant's turn at once, this one answers in a sentence. It keeps the model's
    form, not its facts: the float model puts 0.97 on ' Paris' after "The capital of France is"; this
    file (AMD host) said Paris, but the same settings on an Intel host give ' England' 0.16 with Paris
    out of the top 5, and neither 8192 tokens, three distillation epochs, 48 distillation windows nor
    four outer steps (6-7 min each) brought it back to the top (test_answers_in_a_sentence says what it
    asks now). A file that knows the answer takes the default settings (KLD 0.27, about half an hour
    here), too long for the tests."""
    from conftest import run_cli
    out = tmp_path_factory.mktemp("jlcm3") / "smollm2-jlcm3.gguf"
    r = run_cli("convert", assets.hf_model_dir(), "-o", out, "--type", "jlcm3", "--outer-steps", "0",
                "--sweeps", "0", "--distill-epochs", "1", "--distill-seqs", "0", "--calib-tokens", "4096", "--calib-len", "512",
                "--quiet")
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




def words(text):
    return re.findall(r"[A-Za-z]+", text)


def test_answers_in_a_sentence(build, jlcm3_model, novels):
    """The answer is English: its words are words of the novels (at least 80% of them, none repeated
    into a loop). What the quick file says changes with any change to the learner ("The capital of
    France is England" on one host; "... is not a country, but it is the United States," after the
    scale refits became exact; "You're ready to join the table." with act order), so the test asks for
    language, not for a fact. Broken kernels give other characters, a loop of one word, or nothing."""
    text = llama_cpp.generate(build, jlcm3_model, CHAT, n_predict=16)
    said = [w.lower() for w in words(text)]
    vocab = {w.lower() for path in novels.values() for w in words(path.read_text(encoding="utf-8"))}
    vocab.add("paris")          # the float model's answer, which the novels never name
    assert said and len(set(said)) >= min(3, len(said)), text
    assert sum(w in vocab for w in said) >= 0.8 * len(said), text


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


def short_text(novels, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text(novels[assets.EVAL_TEXT].read_text(encoding="utf-8")[:8000], encoding="utf-8")
    return text


def kld_base(build, model, text, base, flags=()):
    """llama-perplexity's logits over 4 x 128 tokens of text, saved to base; returns its log."""
    r = run(build.command("llama-perplexity") + ["-m", str(model), "-f", str(text), "-c", "128", "--chunks", "4",
                                                 "-t", "2", "-v", "--kl-divergence-base", str(base), *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


def kld_to(build, model, base, flags=()):
    """Mean KLD of build's logits (with flags) from base's, and the run's log."""
    r = run(build.command("llama-perplexity") + ["-m", str(model), "-t", "2", "-v", "--kl-divergence-base",
                                                 str(base), "--kl-divergence", *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    return float(scoreboard.KLD_LINE.search(r.stdout + r.stderr).group(1)), r.stderr


def float_order_bound(floor):
    return FLOAT_ORDER_KLD_FACTOR * max(floor, FLOAT_ORDER_KLD_MIN)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the repack path is x86 (AVX2) only")
def test_repack_path_agrees_with_vec_dot(build, converted, novels, tmp_path):
    """On x86 the JLCM2 and JLCM3 matrices run through ggml's repack path (csrc's gemv and gemm over
    rows interleaved eight at a time); --no-repack keeps the row-by-row vec_dot. Token by token and in
    batches, the repack path's logits lie as close to vec_dot's as vec_dot's own lie to each other
    between the two modes."""
    base = tmp_path / "vec_dot-token.kld"
    log = kld_base(build, converted, short_text(novels, tmp_path), base, ["-ub", "1", "--no-repack"])
    assert "repack tensor" not in log
    floor, _ = kld_to(build, converted, base, ["--no-repack"])
    for mode, batch in (("token", ["-ub", "1"]), ("batch", [])):
        kld, log = kld_to(build, converted, base, batch)
        assert "with jlcm2_8x8" in log and "with jlcm3_8x8" in log
        assert kld < float_order_bound(floor), (mode, kld, floor)


def test_aarch64_agrees_with_x86(arm, build, jlcm3_model, novels, tmp_path):
    """The aarch64 build (NEON kernels, under qemu) answers the chat prompt end to end, and its logits
    on 4 x 128 tokens lie as close to x86's as x86's own do between token-by-token and batched runs.
    Both CPUs round differently everywhere (ggml's own kernels too), so where a model's top tokens are
    close their greedy answers part, and one near tie changes all that follows: on the Zen 5 host of
    2026-12-07 this file's answers parted at the sixth token, on a fresh one of 2026-12-08 (whose own
    quick file differs a little) at the first ("The capital of France is France." against "A nation of
    words, ..."), while the aarch64 logits lay closer to x86's (KLD 0.0029) than x86's batched and
    token-by-token runs did to each other (0.0032). So the answers must each be words, and the logits
    carry the comparison."""
    x86 = llama_cpp.generate(build, jlcm3_model, CHAT, n_predict=8)
    arm64 = llama_cpp.generate(arm, jlcm3_model, CHAT, n_predict=8)
    assert len(words(x86)) >= 3 and len(words(arm64)) >= 3, (x86, arm64)
    base = tmp_path / "x86.kld"
    kld_base(build, jlcm3_model, short_text(novels, tmp_path), base)
    floor, _ = kld_to(build, jlcm3_model, base, ["-ub", "1"])
    kld, _ = kld_to(arm, jlcm3_model, base)
    assert kld < float_order_bound(floor), (kld, floor)


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


def test_old_jlcm3_layout_is_refused(build, jlcm3_model, tmp_path):
    """A file whose JLCM3 tensors are in format version 1's bit layout would run other weights without
    any error: the patched loader stops with a message instead."""
    key = b"jlcm.format_version" + struct.pack("<II", 4, 2)      # name, GGUF_TYPE_UINT32, value
    data = jlcm3_model.read_bytes()
    assert data.count(key) == 1
    old = tmp_path / "v1.gguf"
    old.write_bytes(data.replace(key, key[:-4] + struct.pack("<I", 1)))
    r = run(build.command("llama-completion") + ["-m", str(old), "-p", PROMPT, "-n", "1", "-no-cnv"], timeout=300)
    assert r.returncode > 0, r.returncode
    assert "format-version-1 bit layout" in r.stderr, r.stderr[-2000:]


def test_llama_quantize_files_name_the_format_version(build, f16, tmp_path):
    """The patched llama-quantize's JLCM files carry jlcm.format_version as jlcm-gguf convert's do (the
    patch writes the number itself: this is where the two are compared), so a later block layout can
    refuse them; a stock type's file carries no such key."""
    from jlcm_gguf import gguf_io, pack

    def version(path):
        field = gguf_io.open_reader(path).fields.get("jlcm.format_version")
        return None if field is None else int(field.parts[field.data[0]][0])

    jlcm = tmp_path / "jlcm2.gguf"
    r = run(build.command("llama-quantize") + [str(f16), str(jlcm), "JLCM2", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert version(jlcm) == pack.FORMAT_VERSION
    q4 = tmp_path / "q4_0.gguf"
    r = run(build.command("llama-quantize") + [str(f16), str(q4), "Q4_0", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert version(q4) is None
