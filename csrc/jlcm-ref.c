// Scalar reference of the JLCM kernels. Plain C99, no intrinsics: the SIMD
// files (jlcm-x86.c, jlcm-arm.c) must reproduce these results.
#include "jlcm-impl.h"

#include <math.h>
#include <string.h>

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float    f32_from(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float jlcm_fp16_to_fp32(jlcm_half h) { return jlcm_half_to_float(h); }

jlcm_half jlcm_fp32_to_fp16(float f) {
    const uint32_t u    = f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    const uint32_t a    = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;           // nan
    if (a >= 0x477ff000u) return sign | 0x7c00;          // rounds to >= 65520: inf
    if (a < 0x38800000u) {                               // below 2^-14: subnormal or zero
        // a / 2^-24 rounded to nearest even; adding 0.5 (as float) does that in binary32
        const float v = f32_from(a) + 0.5f;
        return sign | (uint16_t)(f32_bits(v) - f32_bits(0.5f));
    }
    // normal: drop 13 mantissa bits, round to nearest even
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1);
    return sign | (uint16_t)((r - (112u << 23)) >> 13);
}

static inline int jlcm2_index(const block_jlcm2 * b, int i) {
    return (b->qs[i % 16] >> (2 * (i / 16))) & 3;
}

static inline int jlcm3_index(const block_jlcm3 * b, int i) {
    return ((b->qs[i % 16] >> (2 * (i / 16))) & 3) | (((b->qh[i % 8] >> (i / 8)) & 1) << 2);
}

static inline int codebook_entry(const uint8_t * cb, int k) {
    return ((cb[k / 2] >> (4 * (k % 2))) & 15) - 8;
}

void dequantize_row_jlcm2_ref(const block_jlcm2 * x, float * y, int64_t k) {
    for (int64_t b = 0; b < k / QK_JLCM; b++) {
        const float d = jlcm_half_to_float(x[b].d);
        for (int i = 0; i < QK_JLCM; i++) {
            y[b * QK_JLCM + i] = d * (float)codebook_entry(x[b].cb, jlcm2_index(&x[b], i));
        }
    }
}

void dequantize_row_jlcm3_ref(const block_jlcm3 * x, float * y, int64_t k) {
    for (int64_t b = 0; b < k / QK_JLCM; b++) {
        const float d = jlcm_half_to_float(x[b].d);
        for (int i = 0; i < QK_JLCM; i++) {
            y[b * QK_JLCM + i] = d * (float)codebook_entry(x[b].cb, jlcm3_index(&x[b], i));
        }
    }
}

void quantize_row_q8_0_jlcm_ref(const float * x, block_q8_0_jlcm * y, int64_t k) {
    for (int64_t b = 0; b < k / QK8_0_JLCM; b++) {
        const float * xb = x + b * QK8_0_JLCM;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0_JLCM; j++) {
            amax = fmaxf(amax, fabsf(xb[j]));
        }
        const float d  = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = jlcm_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0_JLCM; j++) {
            y[b].qs[j] = (int8_t)roundf(xb[j] * id);
        }
    }
}

// The int8 weights of one block, in order: what every SIMD path builds with its table lookup.
static void jlcm2_weights(const block_jlcm2 * b, int8_t w[QK_JLCM]) {
    for (int i = 0; i < QK_JLCM; i++) w[i] = (int8_t)codebook_entry(b->cb, jlcm2_index(b, i));
}

static void jlcm3_weights(const block_jlcm3 * b, int8_t w[QK_JLCM]) {
    for (int i = 0; i < QK_JLCM; i++) w[i] = (int8_t)codebook_entry(b->cb, jlcm3_index(b, i));
}

static float block_dot(const int8_t w[QK_JLCM], float d, const block_q8_0_jlcm * y) {
    float sum = 0.0f;
    for (int h = 0; h < 2; h++) {
        int32_t isum = 0;
        for (int j = 0; j < QK8_0_JLCM; j++) {
            isum += (int32_t)w[h * QK8_0_JLCM + j] * (int32_t)y[h].qs[j];
        }
        sum += jlcm_half_to_float(y[h].d) * (float)isum;
    }
    return d * sum;
}

void vec_dot_jlcm2_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm2 * x = (const block_jlcm2 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    int8_t w[QK_JLCM];
    float sum = 0.0f;
    for (int b = 0; b < n / QK_JLCM; b++) {
        jlcm2_weights(&x[b], w);
        sum += block_dot(w, jlcm_half_to_float(x[b].d), &y[2 * b]);
    }
    *s = sum;
}

void vec_dot_jlcm3_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm3 * x = (const block_jlcm3 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    int8_t w[QK_JLCM];
    float sum = 0.0f;
    for (int b = 0; b < n / QK_JLCM; b++) {
        jlcm3_weights(&x[b], w);
        sum += block_dot(w, jlcm_half_to_float(x[b].d), &y[2 * b]);
    }
    *s = sum;
}
