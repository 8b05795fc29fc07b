# The JLCM kernels (csrc/) are a cffi extension; everything else is in pyproject.toml.
import importlib.util
from pathlib import Path

from setuptools import setup

# Loaded by path: putting jlcm_gguf/ on sys.path would let its modules (kernels, cache, ...) shadow
# top-level packages of the same name that setuptools' own plugins import.
_spec = importlib.util.spec_from_file_location(
    "_kernels_build", Path(__file__).resolve().parent / "jlcm_gguf" / "_kernels_build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

_build.check_compiler()
setup(cffi_modules=["jlcm_gguf/_kernels_build.py:ffibuilder"])
