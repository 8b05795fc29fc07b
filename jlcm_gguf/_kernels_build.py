"""cffi (API mode) build of csrc/: run by the package install (setup.py's cffi_modules).

The library is compiled for the host (-march=native on x86, -mcpu=native on
aarch64), so the SIMD path the host supports is the one built; jlcm_gguf.kernels
can still call the scalar reference.
"""
from __future__ import annotations

import os
import platform
import shlex
import shutil
import sysconfig
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = ["jlcm-ref.c", "jlcm-x86.c", "jlcm-arm.c", "jlcm.c", "jlcm-walk.c"]   # the last: the learner's, not llama.cpp's

CDEF = """
typedef uint16_t jlcm_half;
typedef struct { jlcm_half d; uint8_t cb[2]; uint8_t qs[16]; } block_jlcm2;
typedef struct { jlcm_half d; uint8_t cb[4]; uint8_t qs[16]; uint8_t qh[8]; } block_jlcm3;
typedef struct { jlcm_half d; int8_t qs[32]; } block_q8_0_jlcm;
float     jlcm_fp16_to_fp32(jlcm_half h);
jlcm_half jlcm_fp32_to_fp16(float f);
void dequantize_row_jlcm2_ref(const block_jlcm2 * x, float * y, int64_t k);
void dequantize_row_jlcm3_ref(const block_jlcm3 * x, float * y, int64_t k);
void quantize_row_q8_0_jlcm_ref(const float * x, block_q8_0_jlcm * y, int64_t k);
size_t quantize_jlcm2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_jlcm3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
void vec_dot_jlcm2_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void vec_dot_jlcm3_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
const char * jlcm_simd_name(void);
int  repack_jlcm2x8(void * dst, const block_jlcm2 * src, int64_t nrows, int64_t n);
void gemv_jlcm2x8_q8_0_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemv_jlcm2x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
int  repack_jlcm3x8(void * dst, const block_jlcm3 * src, int64_t nrows, int64_t n);
void gemv_jlcm3x8_q8_0_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemv_jlcm3x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void jlcm_walk_feedback(int64_t rows, int width, const int64_t * col_block, int K,
                        float * W, int64_t ld_w, const float * S, int64_t nb, const float * CB,
                        const float * U, int64_t ld_u, int64_t * idx, int64_t ld_idx,
                        float * err, int64_t ld_err);
void jlcm_walk_sweep(int64_t rows, int width, int64_t col0, int K, int qk, int proximal,
                     float * what, int64_t ld_what, float * EHb, int64_t ld_eh,
                     const float * S, int64_t nb, const float * CB,
                     const float * H, int64_t ld_h, const float * hd,
                     int64_t * idx, int64_t ld_idx, float * D, int64_t ld_d);
"""


def host_flags() -> list[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686"):
        return ["-O2", "-march=native"]
    if machine in ("aarch64", "arm64"):
        return ["-O2", "-mcpu=native"]
    return ["-O2"]


def check_compiler() -> None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = shlex.split(cc)[0]
    if shutil.which(exe) is None:
        raise SystemExit(f"jlcm-gguf: no C compiler found ({exe!r}) to build the JLCM kernels in csrc/; "
                         "install gcc or clang (Debian: apt-get install gcc), or point CC at one")


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "jlcm_gguf._kernels",
    '#include "jlcm.h"\n#include "jlcm-walk.h"',
    # setuptools wants paths relative to setup.py's directory, the working directory of an install
    sources=[os.path.relpath(CSRC / s) for s in SOURCES],
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=host_flags() + ["-std=c11"],
)

if __name__ == "__main__":
    check_compiler()
    ffibuilder.compile(verbose=True)
