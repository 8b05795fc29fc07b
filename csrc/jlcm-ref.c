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

// Indices 0..31: nibble i of qs (bits 0-2; qs[i % 16], low nibble for i < 16). Index 32 + j: low
// bits from qh's 2-bit field j / 8 of qh[j % 8], high bit the fourth bit of nibble j.
static inline int jlcm3_index(const block_jlcm3 * b, int i) {
    if (i < 32) return (b->qs[i % 16] >> (4 * (i / 16))) & 7;
    const int j = i - 32;
    return ((b->qh[j % 8] >> (2 * (j / 8))) & 3) | (((b->qs[j % 16] >> (4 * (j / 16) + 3)) & 1) << 2);
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
static void jlcm2_weights(const void * block, int8_t w[QK_JLCM]) {
    const block_jlcm2 * b = (const block_jlcm2 *)block;
    for (int i = 0; i < QK_JLCM; i++) w[i] = (int8_t)codebook_entry(b->cb, jlcm2_index(b, i));
}

static void jlcm3_weights(const void * block, int8_t w[QK_JLCM]) {
    const block_jlcm3 * b = (const block_jlcm3 *)block;
    for (int i = 0; i < QK_JLCM; i++) w[i] = (int8_t)codebook_entry(b->cb, jlcm3_index(b, i));
}

// One block's d * (d_y0 * isum_0 + d_y1 * isum_1), the isum integer: the float order every reference sums in.
static float block_dot(jlcm_half d, const int8_t w[QK_JLCM], const block_q8_0_jlcm * y) {
    float half_sums = 0.0f;
    for (int h = 0; h < 2; h++) {
        int32_t isum = 0;
        for (int j = 0; j < QK8_0_JLCM; j++) {
            isum += (int32_t)w[h * QK8_0_JLCM + j] * (int32_t)y[h].qs[j];
        }
        half_sums += jlcm_half_to_float(y[h].d) * (float)isum;
    }
    return jlcm_half_to_float(d) * half_sums;
}

// sum over blocks b of block_dot; every block starts with its d
static float row_dot(int n, const uint8_t * x, size_t block_bytes, void (*weights)(const void *, int8_t *),
                     const block_q8_0_jlcm * y) {
    int8_t w[QK_JLCM];
    float sum = 0.0f;
    for (int b = 0; b < n / QK_JLCM; b++) {
        const uint8_t * blk = x + (size_t)b * block_bytes;
        jlcm_half d;
        memcpy(&d, blk, 2);
        weights(blk, w);
        sum += block_dot(d, w, &y[2 * b]);
    }
    return sum;
}

void vec_dot_jlcm2_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    *s = row_dot(n, (const uint8_t *)vx, sizeof(block_jlcm2), jlcm2_weights, (const block_q8_0_jlcm *)vy);
}

void vec_dot_jlcm3_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    *s = row_dot(n, (const uint8_t *)vx, sizeof(block_jlcm3), jlcm3_weights, (const block_q8_0_jlcm *)vy);
}

// ---------------------------------------------------------------------------------------
// The 8-row interleaved JLCM2 layout (block_jlcm2x8) of ggml's repack path.

static inline int jlcm2x8_index(const block_jlcm2x8 * b, int r, int i) {
    const int g = i / 4;
    return (b->qs[32 * (g / 4) + 4 * r + i % 4] >> (2 * (g % 4))) & 3;
}

int repack_jlcm2x8(block_jlcm2x8 * dst, const block_jlcm2 * src, int64_t nrows, int64_t n) {
    if (nrows % 8 || n % QK_JLCM) return -1;
    const int64_t nb = n / QK_JLCM;
    for (int64_t x = 0; x < nrows / 8; x++) {
        for (int64_t b = 0; b < nb; b++) {
            block_jlcm2x8 * o = &dst[x * nb + b];
            memset(o, 0, sizeof(*o));
            for (int r = 0; r < 8; r++) {
                const block_jlcm2 * in = &src[(8 * x + r) * nb + b];
                o->d[r] = in->d;
                o->cb[2 * r] = in->cb[0];
                o->cb[2 * r + 1] = in->cb[1];
                for (int i = 0; i < QK_JLCM; i++) {
                    const int g = i / 4;
                    o->qs[32 * (g / 4) + 4 * r + i % 4] |= (uint8_t)(jlcm2_index(in, i) << (2 * (g % 4)));
                }
            }
        }
    }
    return 0;
}

// Row r's int8 weights in one repacked block.
static void jlcm2x8_weights(const void * block, int r, int8_t w[QK_JLCM]) {
    const block_jlcm2x8 * b = (const block_jlcm2x8 *)block;
    for (int i = 0; i < QK_JLCM; i++) w[i] = (int8_t)codebook_entry(&b->cb[2 * r], jlcm2x8_index(b, r, i));
}

// Row by row, the sums of row_dot in its order, so the result equals the vec_dot reference's.
// Both repacked layouts lead with the eight rows' scales, d[8].
static void gemv_x8_ref(int n, float * s, const uint8_t * x, size_t block_bytes,
                        void (*weights)(const void *, int, int8_t *), const block_q8_0_jlcm * y, int nc) {
    const int nb = n / QK_JLCM;
    int8_t w[QK_JLCM];
    for (int g = 0; g < nc / 8; g++) {
        for (int r = 0; r < 8; r++) {
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t * blk = x + ((size_t)g * nb + b) * block_bytes;
                jlcm_half d;
                memcpy(&d, blk + 2 * r, 2);
                weights(blk, r, w);
                sum += block_dot(d, w, &y[2 * b]);
            }
            s[8 * g + r] = sum;
        }
    }
}

void gemv_jlcm2x8_q8_0_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    (void)bs; (void)nr;
    gemv_x8_ref(n, s, (const uint8_t *)vx, sizeof(block_jlcm2x8), jlcm2x8_weights, (const block_q8_0_jlcm *)vy, nc);
}

// Where row r's weight i sits in block_jlcm3x8: index vector v, byte j (see jlcm.h).
static inline void jlcm3x8_position(int r, int i, int * v, int * j) {
    const int p = (r % 4) / 2, s = r % 2, lane = r / 4;
    *v = 2 * (i / 8) + p;
    *j = 16 * lane + 8 * s + i % 8;
}

static inline int jlcm3x8_index(const block_jlcm3x8 * b, int r, int i) {
    int v, j;
    jlcm3x8_position(r, i, &v, &j);
    return ((b->qs[32 * (v / 4) + j] >> (2 * (v % 4))) & 3) | (((b->qh[32 * (v / 8) + j] >> (v % 8)) & 1) << 2);
}

int repack_jlcm3x8(block_jlcm3x8 * dst, const block_jlcm3 * src, int64_t nrows, int64_t n) {
    if (nrows % 8 || n % QK_JLCM) return -1;
    const int64_t nb = n / QK_JLCM;
    for (int64_t x = 0; x < nrows / 8; x++) {
        for (int64_t b = 0; b < nb; b++) {
            block_jlcm3x8 * o = &dst[x * nb + b];
            memset(o, 0, sizeof(*o));
            for (int r = 0; r < 8; r++) {
                const block_jlcm3 * in = &src[(8 * x + r) * nb + b];
                o->d[r] = in->d;
                memcpy(&o->cb[4 * r], in->cb, 4);
                for (int i = 0; i < QK_JLCM; i++) {
                    int v, j;
                    jlcm3x8_position(r, i, &v, &j);
                    const int idx = jlcm3_index(in, i);
                    o->qs[32 * (v / 4) + j] |= (uint8_t)((idx & 3) << (2 * (v % 4)));
                    o->qh[32 * (v / 8) + j] |= (uint8_t)((idx >> 2) << (v % 8));
                }
            }
        }
    }
    return 0;
}

static void jlcm3x8_weights(const void * block, int r, int8_t w[QK_JLCM]) {
    const block_jlcm3x8 * b = (const block_jlcm3x8 *)block;
    for (int i = 0; i < QK_JLCM; i++) w[i] = (int8_t)codebook_entry(&b->cb[4 * r], jlcm3x8_index(b, r, i));
}

void gemv_jlcm3x8_q8_0_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    (void)bs; (void)nr;
    gemv_x8_ref(n, s, (const uint8_t *)vx, sizeof(block_jlcm3x8), jlcm3x8_weights, (const block_q8_0_jlcm *)vy, nc);
}

// gemm: activation rows come 4 at a time (block_q8_0x4_jlcm). Each row is put back in order and
// goes through the reference gemv.
typedef void (*jlcm_gemv_fn)(int, float *, size_t, const void *, const void *, int, int);

static void gemm_by_rows(jlcm_gemv_fn gemv, int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    const int nb = n / QK8_0_JLCM;
    block_q8_0_jlcm row[nb];
    for (int y = 0; y < nr / 4; y++) {
        const block_q8_0x4_jlcm * a = (const block_q8_0x4_jlcm *)vy + (size_t)y * nb;
        for (int m = 0; m < 4; m++) {
            for (int b = 0; b < nb; b++) {
                row[b].d = a[b].d[m];
                for (int k = 0; k < QK8_0_JLCM; k++) row[b].qs[k] = a[b].qs[32 * (k / 8) + 8 * m + k % 8];
            }
            gemv(n, s + (size_t)(4 * y + m) * bs, bs, vx, row, 1, nc);
        }
    }
}

void gemm_jlcm2x8_q8_0x4_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_by_rows(gemv_jlcm2x8_q8_0_ref, n, s, bs, vx, vy, nr, nc);
}

void gemm_jlcm3x8_q8_0x4_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    gemm_by_rows(gemv_jlcm3x8_q8_0_ref, n, s, bs, vx, vy, nr, nc);
}

// ---------------------------------------------------------------------------------------
// Data-free reference quantizer: what ggml's from_float / quantize_chunk call (llama-quantize,
// copies into a JLCM tensor, upstream's tests). jlcm-gguf's learned quantizer (jlcm_gguf/) is
// the real one; this is per-block weighted 1-D k-means with the codebook on the int4 grid.

#define JLCM_KMEANS_ITERS 12

// Weighted Lloyd iterations on one block; c[0..K) starts spread over the block's range.
static void block_kmeans(const float * x, const float * w, int K, float * c) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < QK_JLCM; i++) { lo = fminf(lo, x[i]); hi = fmaxf(hi, x[i]); }
    for (int k = 0; k < K; k++) c[k] = lo + (hi - lo) * (k + 0.5f) / K;
    for (int it = 0; it < JLCM_KMEANS_ITERS; it++) {
        float sw[8] = {0}, swx[8] = {0};
        for (int i = 0; i < QK_JLCM; i++) {
            int best = 0;
            for (int k = 1; k < K; k++) if (fabsf(x[i] - c[k]) < fabsf(x[i] - c[best])) best = k;
            sw[best] += w[i];
            swx[best] += w[i] * x[i];
        }
        for (int k = 0; k < K; k++) if (sw[k] > 0) c[k] = swx[k] / sw[k];
    }
}

static float assign(const float * x, const float * w, int K, const int8_t * q, float d, uint8_t * idx) {
    float err = 0;
    for (int i = 0; i < QK_JLCM; i++) {
        int best = 0;
        for (int k = 1; k < K; k++) if (fabsf(x[i] - d * q[k]) < fabsf(x[i] - d * q[best])) best = k;
        idx[i] = (uint8_t)best;
        const float e = x[i] - d * q[best];
        err += w[i] * e * e;
    }
    return err;
}

// Codebook on the int4 grid: a few units (full range and shrunk, which trades a clipped
// extreme entry for finer inner ones), each refit by least squares; the lowest error wins.
static void quantize_block(const float * x, const float * w, int K, float * d_out, int8_t * q_out, uint8_t * idx_out) {
    float c[8];
    block_kmeans(x, w, K, c);
    float cmax = 0;
    for (int k = 0; k < K; k++) cmax = fmaxf(cmax, fabsf(c[k]));
    *d_out = 0;
    for (int k = 0; k < K; k++) q_out[k] = 0;
    for (int i = 0; i < QK_JLCM; i++) idx_out[i] = 0;
    if (cmax == 0) return;
    static const float shrink[] = {1.0f, 0.85f, 0.7f, 0.55f};
    float best = INFINITY;
    for (size_t s = 0; s < sizeof(shrink) / sizeof(shrink[0]); s++) {
        float d = cmax / 7.5f * shrink[s];
        int8_t q[8];
        uint8_t idx[QK_JLCM];
        for (int k = 0; k < K; k++) q[k] = (int8_t)fmaxf(-8.0f, fminf(7.0f, roundf(c[k] / d)));
        assign(x, w, K, q, d, idx);
        float sxq = 0, sqq = 0;
        for (int i = 0; i < QK_JLCM; i++) { sxq += w[i] * x[i] * q[idx[i]]; sqq += w[i] * q[idx[i]] * q[idx[i]]; }
        if (sqq > 0) d = sxq / sqq;
        d = jlcm_half_to_float(jlcm_fp32_to_fp16(d));      // the error of what is stored
        const float err = assign(x, w, K, q, d, idx);
        if (err < best) {
            best = err;
            *d_out = d;
            memcpy(q_out, q, (size_t)K);
            memcpy(idx_out, idx, QK_JLCM);
        }
    }
}

static void pack_block(int bits, float d, const int8_t * q, const uint8_t * idx, uint8_t * out) {
    const int K = 1 << bits;
    const jlcm_half h = jlcm_fp32_to_fp16(d);
    memcpy(out, &h, 2);
    uint8_t * cb = out + 2;
    for (int k = 0; k < K; k += 2) cb[k / 2] = (uint8_t)((q[k] + 8) | ((q[k + 1] + 8) << 4));
    uint8_t * qs = cb + K / 2;
    memset(qs, 0, QK_JLCM / 4 + (bits == 3 ? QK_JLCM / 8 : 0));
    for (int i = 0; i < QK_JLCM; i++) {
        if (bits == 2) {
            qs[i % 16] |= (uint8_t)((idx[i] & 3) << (2 * (i / 16)));
        } else if (i < 32) {
            qs[i % 16] |= (uint8_t)((idx[i] & 7) << (4 * (i / 16)));
        } else {
            const int j = i - 32;
            qs[16 + j % 8] |= (uint8_t)((idx[i] & 3) << (2 * (j / 8)));
            qs[j % 16] |= (uint8_t)(((idx[i] >> 2) & 1) << (4 * (j / 16) + 3));
        }
    }
}

static void quantize_row(int bits, const float * x, void * y, int64_t k, const float * imatrix) {
    const size_t bytes = bits == 2 ? sizeof(block_jlcm2) : sizeof(block_jlcm3);
    for (int64_t b = 0; b < k / QK_JLCM; b++) {
        const float * xb = x + b * QK_JLCM;
        float w[QK_JLCM], d;
        int8_t q[8];
        uint8_t idx[QK_JLCM];
        // With an imatrix, as ggml's types weight it: importance times sqrt(sigma2 + x^2), sigma2 the
        // block's mean square, so small weights keep a floor instead of counting for nothing.
        // Without one, near-uniform weights (plain squared error) with a nudge toward large weights.
        float sigma2 = 0;
        for (int i = 0; i < QK_JLCM; i++) sigma2 += xb[i] * xb[i];
        sigma2 /= QK_JLCM;
        for (int i = 0; i < QK_JLCM; i++) {
            w[i] = imatrix ? imatrix[b * QK_JLCM + i] * sqrtf(sigma2 + xb[i] * xb[i])
                           : sqrtf(1e-8f + xb[i] * xb[i]) + 1.0f;
        }
        quantize_block(xb, w, 1 << bits, &d, q, idx);
        pack_block(bits, d, q, idx, (uint8_t *)y + b * bytes);
    }
}

void quantize_row_jlcm2_ref(const float * x, block_jlcm2 * y, int64_t k) { quantize_row(2, x, y, k, NULL); }
void quantize_row_jlcm3_ref(const float * x, block_jlcm3 * y, int64_t k) { quantize_row(3, x, y, k, NULL); }

size_t quantize_jlcm2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    const size_t row = (size_t)(n_per_row / QK_JLCM) * sizeof(block_jlcm2);
    for (int64_t r = 0; r < nrows; r++) quantize_row(2, src + r * n_per_row, (char *)dst + r * row, n_per_row, imatrix);
    return (size_t)nrows * row;
}

size_t quantize_jlcm3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    const size_t row = (size_t)(n_per_row / QK_JLCM) * sizeof(block_jlcm3);
    for (int64_t r = 0; r < nrows; r++) quantize_row(3, src + r * n_per_row, (char *)dst + r * row, n_per_row, imatrix);
    return (size_t)nrows * row;
}

// ---------------------------------------------------------------------------------------
// Validation (ggml_validate_row_data): every codebook nibble and index is a valid value by
// construction, so a corrupt block shows only in its scale: NaN or Inf is refused.
int jlcm_validate_row(int type, const void * data, size_t nbytes) {
    const size_t bytes = type == JLCM_TYPE_JLCM2 ? sizeof(block_jlcm2) : sizeof(block_jlcm3);
    if (nbytes % bytes != 0) return 0;
    for (size_t b = 0; b < nbytes / bytes; b++) {
        jlcm_half h;
        memcpy(&h, (const uint8_t *)data + b * bytes, 2);
        if ((h & 0x7c00) == 0x7c00) return 0;
    }
    return 1;
}
