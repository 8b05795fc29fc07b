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

// The repacked layout has an AVX2 gemv only; NEON keeps the row-by-row vec_dot (ggml's repack
// path offers the layout to x86 with AVX2 alone).
#if !defined(__AVX2__)
void gemv_jlcm2x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm2x8_q8_0_ref(n, s, bs, vx, vy, nr, nc);
}
void gemv_jlcm3x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm3x8_q8_0_ref(n, s, bs, vx, vy, nr, nc);
}
#endif

void gemv_jlcm2x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm2x8_q8_0_simd(n, s, bs, vx, vy, nr, nc);
}

void gemv_jlcm3x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemv_jlcm3x8_q8_0_simd(n, s, bs, vx, vy, nr, nc);
}

// Activation rows come 4 at a time, interleaved 8 bytes at a time (ggml's block_q8_0x4): row m's
// byte k of a 32-block is qs[32 * (k / 8) + 8 * m + k % 8]. Each row is put back in order and
// goes through the gemv: the weights are read 4 times, the activations' layout costs nothing.
typedef void (*jlcm_gemv_fn)(int, float *, size_t, const void *, const void *, int, int);

static void gemm_q8_0x4(jlcm_gemv_fn gemv, int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    typedef struct { jlcm_half d[4]; int8_t qs[4 * QK8_0_JLCM]; } q8_0x4;
    const int nb = n / QK8_0_JLCM;
    block_q8_0_jlcm row[nb];
    for (int y = 0; y < nr / 4; y++) {
        const q8_0x4 * a = (const q8_0x4 *)vy + (size_t)y * nb;
        for (int m = 0; m < 4; m++) {
            for (int b = 0; b < nb; b++) {
                row[b].d = a[b].d[m];
                for (int k = 0; k < QK8_0_JLCM; k++) row[b].qs[k] = a[b].qs[32 * (k / 8) + 8 * m + k % 8];
            }
            gemv(n, s + (size_t)(4 * y + m) * bs, bs, vx, row, 1, nc);
        }
    }
}

void gemm_jlcm2x8_q8_0x4(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_q8_0x4(gemv_jlcm2x8_q8_0, n, s, bs, vx, vy, nr, nc);
}

void gemm_jlcm3x8_q8_0x4(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_q8_0x4(gemv_jlcm3x8_q8_0, n, s, bs, vx, vy, nr, nc);
}

void vec_dot_jlcm2_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm2_q8_0_simd(n, s, bs, vx, bx, vy, by, nrc);
}

void vec_dot_jlcm3_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm3_q8_0_simd(n, s, bs, vx, bx, vy, by, nrc);
}
