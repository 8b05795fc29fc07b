// NEON kernels (aarch64). Each 64-weight block: the codebook nibbles become a
// 16-byte int8 table, the indices are spread to bytes, and one tbl per 16
// weights gives int8 weights; sdot (dotprod) or widening multiplies (plain
// NEON, e.g. Cortex-A53) multiply them with Q8_0 activations.
#include "jlcm-impl.h"

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>

#if defined(__ARM_FEATURE_DOTPROD)
#define JLCM_HAVE_SIMD "neon-dotprod"
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
}
#else
#define JLCM_HAVE_SIMD "neon"
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
}
#endif

// Codebook nibbles -> int8 entries, entry k in byte k.
static inline int8x16_t codebook_table(const uint8_t * cb, int nbytes) {
    uint8_t raw[8] = {0};
    memcpy(raw, cb, (size_t)nbytes);
    const uint8x8_t v = vld1_u8(raw);
    const uint8x8x2_t z = vzip_u8(vand_u8(v, vdup_n_u8(0x0f)), vshr_n_u8(v, 4));
    return vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(z.val[0], z.val[1])), vdupq_n_s8(8));
}

// Index bytes of weights 16k .. 16k+15, k = 0..3.
static inline void low_indices(const uint8_t * qs, uint8x16_t i[4]) {
    const uint8x16_t q  = vld1q_u8(qs);
    const uint8x16_t m3 = vdupq_n_u8(3);
    i[0] = vandq_u8(q, m3);
    i[1] = vandq_u8(vshrq_n_u8(q, 2), m3);
    i[2] = vandq_u8(vshrq_n_u8(q, 4), m3);
    i[3] = vshrq_n_u8(q, 6);
}

// High index bits: bit i/8 of qh[i%8], moved to bit 2 of byte i.
static inline void high_indices(const uint8_t * qh, uint8x16_t i[4]) {
    const uint8x8_t h8 = vld1_u8(qh);
    const uint8x16_t h = vcombine_u8(h8, h8);
    const uint8x16_t four = vdupq_n_u8(4);
    for (int k = 0; k < 4; k++) {
        const uint8x16_t m = vcombine_u8(vdup_n_u8((uint8_t)(1u << (2 * k))), vdup_n_u8((uint8_t)(2u << (2 * k))));
        i[k] = vorrq_u8(i[k], vandq_u8(vtstq_u8(h, m), four));
    }
}

static inline float32x4_t accumulate(float32x4_t acc, int8x16_t t, const uint8x16_t i[4], float d,
                                     const block_q8_0_jlcm * y) {
    const int8x16_t w0 = vqtbl1q_s8(t, i[0]), w1 = vqtbl1q_s8(t, i[1]);
    const int8x16_t w2 = vqtbl1q_s8(t, i[2]), w3 = vqtbl1q_s8(t, i[3]);
    int32x4_t p0 = dot16(vdupq_n_s32(0), w0, vld1q_s8(y[0].qs));
    p0 = dot16(p0, w1, vld1q_s8(y[0].qs + 16));
    int32x4_t p1 = dot16(vdupq_n_s32(0), w2, vld1q_s8(y[1].qs));
    p1 = dot16(p1, w3, vld1q_s8(y[1].qs + 16));
    acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p0), d * jlcm_half_to_float(y[0].d));
    return vmlaq_n_f32(acc, vcvtq_f32_s32(p1), d * jlcm_half_to_float(y[1].d));
}

void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm2 * x = (const block_jlcm2 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int b = 0; b < n / QK_JLCM; b++) {
        uint8x16_t i[4];
        low_indices(x[b].qs, i);
        acc = accumulate(acc, codebook_table(x[b].cb, 2), i, jlcm_half_to_float(x[b].d), &y[2 * b]);
    }
    *s = vaddvq_f32(acc);
}

void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm3 * x = (const block_jlcm3 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int b = 0; b < n / QK_JLCM; b++) {
        uint8x16_t i[4];
        low_indices(x[b].qs, i);
        high_indices(x[b].qh, i);
        acc = accumulate(acc, codebook_table(x[b].cb, 4), i, jlcm_half_to_float(x[b].d), &y[2 * b]);
    }
    *s = vaddvq_f32(acc);
}

const char * jlcm_simd_name(void) { return JLCM_HAVE_SIMD; }

#endif
