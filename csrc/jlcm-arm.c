// NEON kernels (aarch64). Each 64-weight block: the codebook becomes a 16-byte
// int8 table (built in a scalar register, jlcm-impl.h), the indices are spread to
// bytes, and one tbl per 16 weights gives int8 weights; sdot (dotprod) or widening
// multiplies (plain NEON, e.g. Cortex-A53) multiply them with Q8_0 activations.
// Blocks go in pairs, whose four 32-weight sums share one conversion to float.
#include "jlcm-impl.h"

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>

#include "jlcm-half-table.h"

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


// A value the compiler must keep in a general register. The loops are bound by the two vector
// pipes (Cortex-A76, Neoverse N1), and a dup or fmov from a general register runs on an integer
// pipe, where gcc would otherwise move a word into a vector register first and shift or
// broadcast it there, spending vector slots.
#if defined(__GNUC__)
#define JLCM_IN_GPR(x) __asm__("" : "+r"(x))
#else
#define JLCM_IN_GPR(x) ((void)0)
#endif

// Codebook tables, entry k in byte k and repeating (jlcm-impl.h).
static inline void codebook_tables2(const block_jlcm2 * a, const block_jlcm2 * b, int8x16_t * ta, int8x16_t * tb) {
    const uint64_t w = jlcm2_table_pair(a->cb, b->cb);
    uint32_t wb = (uint32_t)(w >> 32);
    JLCM_IN_GPR(wb);
    *ta = vreinterpretq_s8_u32(vdupq_n_u32((uint32_t)w));
    *tb = vreinterpretq_s8_u32(vdupq_n_u32(wb));
}

static inline int8x16_t codebook_table3(const block_jlcm3 * b) {
    uint64_t w = jlcm3_table_word(b->cb);
    JLCM_IN_GPR(w);
    return vreinterpretq_s8_u64(vdupq_n_u64(w));
}

// JLCM2's int8 weights 16k .. 16k+15, k = 0..3, from its table t (entry j % 4 in byte j). A second
// table holds entry j / 4 in byte j, so a byte's low nibble (fields 0 and 1) picks field 0's entry
// in t and field 1's in the other, and its high nibble fields 2 and 3: one and and one shift give
// the 64 indices, where four fields took five ops (llvm-mca, cycles per 256 weights on the N1
// model / the A55's: 39.2 / 206 before).
static inline void jlcm2_weights(int8x16_t t, const uint8_t * qs, int8x16_t w[4]) {
    static const uint8_t spread[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    const int8x16_t t1 = vqtbl1q_s8(t, vld1q_u8(spread));
    const uint8x16_t q  = vld1q_u8(qs);
    const uint8x16_t lo = vandq_u8(q, vdupq_n_u8(15));
    const uint8x16_t hi = vshrq_n_u8(q, 4);
    w[0] = vqtbl1q_s8(t, lo);
    w[1] = vqtbl1q_s8(t1, lo);
    w[2] = vqtbl1q_s8(t, hi);
    w[3] = vqtbl1q_s8(t1, hi);
}

// JLCM3's index bytes of weights 16k .. 16k+15. Indices 0..31 are the nibbles of qs: bits 0-2 the
// index, bit 3 the high bit of index 32 + the nibble's number, which tbl ignores because the table
// repeats every 8 bytes (indices stay below 16). Indices 32..63 take their low bits from qh, field
// k of the doubled qh moved down by a per-lane shift, and sli puts the high bit above them (sli
// keeps only the field's two low bits, so no mask). Nine vector ops for 64 indices, where 2-bit
// fields in qs and a high-bit plane in qh took about twelve (llvm-mca, cycles per 256 weights on
// the N1 model / the A55's: 52 / 258 before, 47 / 210 now); the block layout was chosen for this.
static inline void jlcm3_indices(const block_jlcm3 * b, uint8x16_t i[4]) {
    static const int8_t shifts[2][16] = {
        {0, 0, 0, 0, 0, 0, 0, 0, -2, -2, -2, -2, -2, -2, -2, -2},
        {-4, -4, -4, -4, -4, -4, -4, -4, -6, -6, -6, -6, -6, -6, -6, -6},
    };
    const uint8x16_t q = vld1q_u8(b->qs);
    uint64_t raw;
    memcpy(&raw, b->qh, 8);
    JLCM_IN_GPR(raw);   // dup from a general register: no vector-pipe uop
    const uint8x16_t h = vreinterpretq_u8_u64(vdupq_n_u64(raw));
    i[0] = vandq_u8(q, vdupq_n_u8(15));
    i[1] = vshrq_n_u8(q, 4);
    i[2] = vsliq_n_u8(vshlq_u8(h, vld1q_s8(shifts[0])), vshrq_n_u8(i[0], 3), 2);
    i[3] = vsliq_n_u8(vshlq_u8(h, vld1q_s8(shifts[1])), vshrq_n_u8(q, 7), 2);
}

// p[h] += a block's int8 weights w (16 each) . activations, the h-th 32 weights' 4 partial sums.
static inline void block_dots(const int8x16_t w[4], const block_q8_0_jlcm * y, int32x4_t p[2]) {
    p[0] = dot16(p[0], w[0], vld1q_s8(y[0].qs));
    p[0] = dot16(p[0], w[1], vld1q_s8(y[0].qs + 16));
    p[1] = dot16(p[1], w[2], vld1q_s8(y[1].qs));
    p[1] = dot16(p[1], w[3], vld1q_s8(y[1].qs + 16));
}

// JLCM3's weights: its table t looked up by the index bytes i.
static inline void jlcm3_weights(int8x16_t t, const uint8x16_t i[4], int8x16_t w[4]) {
    for (int k = 0; k < 4; k++) w[k] = vqtbl1q_s8(t, i[k]);
}

// The bits of float(h) as an integer, so that the scales below are put together in general
// registers (the table's entry loaded as a word, not as a float).
static inline uint32_t half_bits(jlcm_half h) {
    uint32_t u;
#if defined(JLCM_HALF_TABLE)
    memcpy(&u, &jlcm_half_table[h], 4);
#else
    const float f = jlcm_half_to_float(h);
    memcpy(&u, &f, 4);
#endif
    return u;
}

// [float(a), float(b)] as one 64-bit word
static inline uint64_t half_pair_bits(jlcm_half a, jlcm_half b) {
    return (uint64_t)half_bits(a) | (uint64_t)half_bits(b) << 32;
}

static inline float32x4_t f32x4_from_bits(uint64_t lo, uint64_t hi) {
    return vreinterpretq_f32_u64(vcombine_u64(vcreate_u64(lo), vcreate_u64(hi)));
}

// The running sums of a row's block pairs: p[0], p[1] block a's halves, p[2], p[3] block b's, never
// reset, and last, their lane sums [a0, a1, b0, b1] after the previous pair. A pair's own sums are the
// difference: one subtraction where zeroing four accumulators took four vector moves (sdot adds into
// its destination), which the N1's two vector pipes feel (llvm-mca: 47.2 -> 45.3 cycles per 256
// weights). int32 wraps, but a difference of wrapped sums is exact while one pair's sums fit.
typedef struct {
    int32x4_t p[4];
    int32x4_t last;
} pair_sums;

// acc += the dot products of the pair just added to r (activations y[0..3]): its four halves' sums
// side by side, [a0, a1, b0, b1], times [dy0 d_a, dy1 d_a, dy2 d_b, dy3 d_b] -- one conversion and
// one multiply-add for 128 weights.
static inline float32x4_t pair_into(float32x4_t acc, pair_sums * r, jlcm_half da, jlcm_half db, const block_q8_0_jlcm * y) {
    const int32x4_t run = vpaddq_s32(vpaddq_s32(r->p[0], r->p[1]), vpaddq_s32(r->p[2], r->p[3]));
    const int32x4_t sums = vsubq_s32(run, r->last);
    r->last = run;
    const float32x4_t dy = f32x4_from_bits(half_pair_bits(y[0].d, y[1].d), half_pair_bits(y[2].d, y[3].d));
    const float32x4_t dx = f32x4_from_bits(half_pair_bits(da, da), half_pair_bits(db, db));
    return vfmaq_f32(acc, vcvtq_f32_s32(sums), vmulq_f32(dy, dx));
}

// A single block's dot product (the last of a row with an odd number of blocks).
static inline float block_sum(const int32x4_t p[2], jlcm_half d, const block_q8_0_jlcm * y) {
    const float dd = jlcm_half_lookup(d);
    return dd * (jlcm_half_lookup(y[0].d) * (float)vaddvq_s32(p[0]) + jlcm_half_lookup(y[1].d) * (float)vaddvq_s32(p[1]));
}

void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm2 * x = (const block_jlcm2 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    const int nb = n / QK_JLCM;
    float32x4_t acc = vdupq_n_f32(0.0f);
    pair_sums r = {{vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)}, vdupq_n_s32(0)};
    int8x16_t w[4];
    float tail = 0.0f;
    const block_jlcm2 * const pairs_end = x + (nb & ~1);
    for (; x < pairs_end; x += 2, y += 4) {
        int8x16_t ta, tb;
        codebook_tables2(&x[0], &x[1], &ta, &tb);
        jlcm2_weights(ta, x[0].qs, w);
        block_dots(w, &y[0], &r.p[0]);
        jlcm2_weights(tb, x[1].qs, w);
        block_dots(w, &y[2], &r.p[2]);
        acc = pair_into(acc, &r, x[0].d, x[1].d, y);
    }
    if (nb & 1) {
        int32x4_t p[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
        jlcm2_weights(vreinterpretq_s8_u32(vdupq_n_u32(jlcm2_table_word(x->cb))), x->qs, w);
        block_dots(w, y, p);
        tail = block_sum(p, x->d, y);
    }
    *s = vaddvq_f32(acc) + tail;
}

// Blocks x[0], x[1] into acc.
static JLCM_INLINE float32x4_t jlcm3_pair(float32x4_t acc, pair_sums * r, const block_jlcm3 * x, const block_q8_0_jlcm * y) {
    uint8x16_t i[4];
    int8x16_t w[4];
    jlcm3_indices(&x[0], i);
    jlcm3_weights(codebook_table3(&x[0]), i, w);
    block_dots(w, &y[0], &r->p[0]);
    jlcm3_indices(&x[1], i);
    jlcm3_weights(codebook_table3(&x[1]), i, w);
    block_dots(w, &y[2], &r->p[2]);
    return pair_into(acc, r, x[0].d, x[1].d, y);
}

void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm3 * x = (const block_jlcm3 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    const int nb = n / QK_JLCM;
    float32x4_t acc = vdupq_n_f32(0.0f);
    pair_sums r = {{vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)}, vdupq_n_s32(0)};
    float tail = 0.0f;
    const block_jlcm3 * const quads_end = x + (nb & ~3);
    for (; x < quads_end; x += 4, y += 8) {
        acc = jlcm3_pair(acc, &r, x, y);
        acc = jlcm3_pair(acc, &r, x + 2, y + 4);
    }
    if (nb & 2) {
        acc = jlcm3_pair(acc, &r, x, y);
        x += 2, y += 4;
    }
    if (nb & 1) {
        uint8x16_t i[4];
        int8x16_t w[4];
        int32x4_t p[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
        jlcm3_indices(x, i);
        jlcm3_weights(codebook_table3(x), i, w);
        block_dots(w, y, p);
        tail = block_sum(p, x->d, y);
    }
    *s = vaddvq_f32(acc) + tail;
}

const char * jlcm_simd_name(void) { return JLCM_HAVE_SIMD; }

#endif
