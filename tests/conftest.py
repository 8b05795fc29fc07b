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


def run_cli(*args, env=None, **kw):
    import subprocess
    return subprocess.run([sys.executable, "-m", "jlcm_gguf.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)
