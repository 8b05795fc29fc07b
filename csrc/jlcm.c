// The fastest path this build compiled: SIMD when the translation units had it, else the reference.
#include "jlcm.h"

#if !(defined(__AVX2__) || (defined(__ARM_NEON) && defined(__aarch64__)))
const char * jlcm_simd_name(void) { return 0; }
void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm2_q8_0_ref(n, s, bs, vx, bx, vy, by, nrc);
}
void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm3_q8_0_ref(n, s, bs, vx, bx, vy, by, nrc);
}
#endif

// The repacked layout has AVX2 kernels only; NEON keeps the row-by-row vec_dot (ggml's repack
// path offers the layout to x86 with AVX2 alone).
#if !defined(__AVX2__)
void gemv_jlcm2x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm2x8_q8_0_ref(n, s, bs, vx, vy, nr, nc);
}
void gemv_jlcm3x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm3x8_q8_0_ref(n, s, bs, vx, vy, nr, nc);
}
void gemm_jlcm2x8_q8_0x4_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_jlcm2x8_q8_0x4_ref(n, s, bs, vx, vy, nr, nc);
}
void gemm_jlcm3x8_q8_0x4_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_jlcm3x8_q8_0x4_ref(n, s, bs, vx, vy, nr, nc);
}
#endif

void gemv_jlcm2x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm2x8_q8_0_simd(n, s, bs, vx, vy, nr, nc);
}

void gemv_jlcm3x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm3x8_q8_0_simd(n, s, bs, vx, vy, nr, nc);
}

void gemm_jlcm2x8_q8_0x4(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_jlcm2x8_q8_0x4_simd(n, s, bs, vx, vy, nr, nc);
}

void gemm_jlcm3x8_q8_0x4(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_jlcm3x8_q8_0x4_simd(n, s, bs, vx, vy, nr, nc);
}

void vec_dot_jlcm2_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm2_q8_0_simd(n, s, bs, vx, bx, vy, by, nrc);
}

void vec_dot_jlcm3_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm3_q8_0_simd(n, s, bs, vx, bx, vy, by, nrc);
}
