import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def build():
    from jlcm_gguf import llama_cpp
    return llama_cpp.build(quiet=True)


@pytest.fixture(scope="session")
def f16():
    from jlcm_gguf import assets
    return assets.f16_reference()


@pytest.fixture(scope="session")
def novels():
    from jlcm_gguf import assets
    return assets.novels()


# quick settings: the learning is covered by test_learn.py; the converted file is what these tests use
QUICK = ("--outer-steps", "0", "--sweeps", "0", "--distill-epochs", "1", "--distill-seqs", "0", "--calib-tokens", "512",
         "--calib-len", "256")


def convert(model, out, *extra, **kw):
    return run_cli("convert", model, "-o", out, *QUICK, "--quiet", *extra, **kw)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The default model converted: JLCM2 everywhere but ffn_down, which is JLCM3 (both types in one file)."""
    from jlcm_gguf import assets
    out = tmp_path_factory.mktemp("convert") / "smollm2-jlcm2.gguf"
    r = convert(assets.hf_model_dir(), out, "--tensor-type", "ffn_down=JLCM3")
    assert r.returncode == 0, r.stderr
    return out


def run_cli(*args, env=None, **kw):
    import subprocess
    return subprocess.run([sys.executable, "-m", "jlcm_gguf.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)
