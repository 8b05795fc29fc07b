# The JLCM kernels (csrc/) are a cffi extension; everything else is in pyproject.toml.
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "jlcm_gguf"))
from _kernels_build import check_compiler  # noqa: E402

check_compiler()
setup(cffi_modules=["jlcm_gguf/_kernels_build.py:ffibuilder"])
