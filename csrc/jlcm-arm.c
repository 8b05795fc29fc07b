// NEON kernels (aarch64). Each 64-weight block: the codebook nibbles become a
// 16-byte int8 table, the indices are spread to bytes, and one tbl per 16
// weights gives int8 weights; sdot (dotprod) or widening multiplies (plain
// NEON, e.g. Cortex-A53) multiply them with Q8_0 activations.
#include "jlcm-impl.h"

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>

#include "jlcm-half-table.h"

// Codebook bytes, spread so that bytes 2k and 2k+1 both hold the byte of entries 2k and
// 2k+1 -> int8 entries. A nibble is entry + 8, i.e. the entry in 4-bit two's complement with
// its top bit flipped: shift the wanted nibble to the top, flip, shift back arithmetically.
static inline int8x16_t nibbles_to_table(uint8x16_t v) {
    static const int8_t to_top[16] = {4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0};
    const uint8x16_t top = veorq_u8(vshlq_u8(v, vld1q_s8(to_top)), vdupq_n_u8(0x80));
    return vshrq_n_s8(vreinterpretq_s8_u8(top), 4);
}

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

// Codebook -> 16-byte int8 table, entry k in byte k (repeating past the block's entries,
// which no index reaches). The codebook bytes come from a full 16-byte load inside the block, spread by tbl:
// a narrow load (which a lane broadcast compiles to) writes part of a register, and
// cores -- and llvm-mca's models -- may serialize it behind that register's last use.
static const uint8_t CB2_SPREAD[16] = {2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3};
static const uint8_t CB3_SPREAD[16] = {2, 2, 3, 3, 4, 4, 5, 5, 2, 2, 3, 3, 4, 4, 5, 5};
static const uint8_t QH_SPREAD[16]  = {8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15};

static inline int8x16_t codebook_table2(const block_jlcm2 * b) {
    return nibbles_to_table(vqtbl1q_u8(vld1q_u8((const uint8_t *)b), vld1q_u8(CB2_SPREAD)));
}

static inline int8x16_t codebook_table3(const block_jlcm3 * b) {
    return nibbles_to_table(vqtbl1q_u8(vld1q_u8((const uint8_t *)b), vld1q_u8(CB3_SPREAD)));
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

// High index bits: bit i/8 of qh[i%8], moved to bit 2 of byte i. Byte j of the doubled qh
// is qh[j%8]; a per-lane shift brings bit 2k (lanes 0-7) or 2k+1 (lanes 8-15) to bit 2, and
// a bit select inserts it (the low index bits leave bit 2 clear).
static inline void high_indices(const block_jlcm3 * b, uint8x16_t i[4]) {
    static const int8_t shifts[4][16] = {
        { 2,  2,  2,  2,  2,  2,  2,  2,  1,  1,  1,  1,  1,  1,  1,  1},
        { 0,  0,  0,  0,  0,  0,  0,  0, -1, -1, -1, -1, -1, -1, -1, -1},
        {-2, -2, -2, -2, -2, -2, -2, -2, -3, -3, -3, -3, -3, -3, -3, -3},
        {-4, -4, -4, -4, -4, -4, -4, -4, -5, -5, -5, -5, -5, -5, -5, -5},
    };
    const uint8x16_t h = vqtbl1q_u8(vld1q_u8(b->qh - 8), vld1q_u8(QH_SPREAD));         // from qs[8..15], qh
    const uint8x16_t bit2 = vdupq_n_u8(4);
    for (int k = 0; k < 4; k++) {
        i[k] = vbslq_u8(bit2, vshlq_u8(h, vld1q_s8(shifts[k])), i[k]);
    }
}

// acc[h] += d * d_y[h] * (int8 weights . int8 activations) for the block's halves h = 0, 1;
// one accumulator per half, so consecutive blocks do not wait on each other's fmla.
static inline void accumulate(float32x4_t acc[2], int8x16_t t, const uint8x16_t i[4], float d,
                              const block_q8_0_jlcm * y) {
    const int8x16_t w0 = vqtbl1q_s8(t, i[0]), w1 = vqtbl1q_s8(t, i[1]);
    const int8x16_t w2 = vqtbl1q_s8(t, i[2]), w3 = vqtbl1q_s8(t, i[3]);
    int32x4_t p0 = dot16(vdupq_n_s32(0), w0, vld1q_s8(y[0].qs));
    p0 = dot16(p0, w1, vld1q_s8(y[0].qs + 16));
    int32x4_t p1 = dot16(vdupq_n_s32(0), w2, vld1q_s8(y[1].qs));
    p1 = dot16(p1, w3, vld1q_s8(y[1].qs + 16));
    acc[0] = vfmaq_n_f32(acc[0], vcvtq_f32_s32(p0), d * jlcm_half_lookup(y[0].d));
    acc[1] = vfmaq_n_f32(acc[1], vcvtq_f32_s32(p1), d * jlcm_half_lookup(y[1].d));
}

void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm2 * x = (const block_jlcm2 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
#pragma GCC unroll 2
    for (int b = 0; b < n / QK_JLCM; b++) {
        uint8x16_t i[4];
        low_indices(x[b].qs, i);
        accumulate(acc, codebook_table2(&x[b]), i, jlcm_half_lookup(x[b].d), &y[2 * b]);
    }
    *s = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}

void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm3 * x = (const block_jlcm3 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int b = 0; b < n / QK_JLCM; b++) {
        uint8x16_t i[4];
        low_indices(x[b].qs, i);
        high_indices(&x[b], i);
        accumulate(acc, codebook_table3(&x[b]), i, jlcm_half_lookup(x[b].d), &y[2 * b]);
    }
    *s = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}

const char * jlcm_simd_name(void) { return JLCM_HAVE_SIMD; }

#endif
