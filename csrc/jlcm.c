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

void vec_dot_jlcm2_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm2_q8_0_simd(n, s, bs, vx, bx, vy, by, nrc);
}

void vec_dot_jlcm3_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    vec_dot_jlcm3_q8_0_simd(n, s, bs, vx, bx, vy, by, nrc);
}
