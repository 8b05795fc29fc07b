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
    uint64x1_t w = vcreate_u64(jlcm3_table_word(b->cb));
    return vreinterpretq_s8_u64(vdupq_lane_u64(w, 0));
}

// Index bytes of weights 16k .. 16k+15, k = 0..3. q >> 4 keeps field 3 above field 2:
// the table repeats every 4 (8) bytes, so tbl reads field 2's entry (or, once high_indices
// sets bit 2, the entry of the 3-bit index).
static inline void low_indices(const uint8_t * qs, uint8x16_t i[4]) {
    const uint8x16_t q  = vld1q_u8(qs);
    const uint8x16_t m3 = vdupq_n_u8(3);
    i[0] = vandq_u8(q, m3);
    i[1] = vandq_u8(vshrq_n_u8(q, 2), m3);
    i[2] = vshrq_n_u8(q, 4);
    i[3] = vshrq_n_u8(q, 6);
}

// High index bits: bit i/8 of qh[i%8] into bit 2 of byte i. Byte j of the doubled qh is
// qh[j%8]; weights 16k..16k+15 take bit 2k (lanes 0-7) or 2k+1 (lanes 8-15). Two ways, two
// groups of 16 each, because either alone overloads one side of a Cortex-A76 (Neoverse N1 model):
// - weights 16-47: a bit test makes the lane all ones where the bit is set, and a bit select
//   copies its bit 2 (two vector ops per 16 weights; low_indices may leave bit 2 set in i[2]);
// - weights 0-15 and 48-63, whose index bytes have bit 2 clear: qh shifted and masked in a
//   general register holds bit j of every qh byte at bit 2 of that byte (one and with a shifted
//   operand); two such words go to a vector register by two fmov, which run on the single
//   multi-cycle integer pipe, and one orr merges them.
// All eight words in general registers would leave that pipe the bound (llvm-mca, cycles per
// 256 weights on the N1 model / the in-order A55's: all eight 59 / 306, all in vector ops 58 / 248,
// these two groups of each kind 52 / 258, one group in vector ops 51 / 296).
static inline uint64x2_t u64x2_from_gpr(uint64_t lo, uint64_t hi) {
#if defined(__GNUC__)
    uint64x2_t v;   // gcc would write the high half with ins, which also takes a vector slot
    __asm__("fmov %d0, %1\n\tfmov %0.d[1], %2" : "=&w"(v) : "r"(lo), "r"(hi));
    return v;
#else
    return vcombine_u64(vcreate_u64(lo), vcreate_u64(hi));
#endif
}

static inline uint64_t high_word(uint64_t raw, uint64_t m, int j) {
    uint64_t w = (j < 2 ? raw << (2 - j) : raw >> (j - 2)) & m;
    JLCM_IN_GPR(w);
    return w;
}

static inline void high_indices(const block_jlcm3 * b, uint8x16_t i[4]) {
    static const uint8_t bits[4][16] = {
        {0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02},
        {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x08, 0x08, 0x08, 0x08, 0x08, 0x08, 0x08, 0x08},
        {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20},
        {0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80},
    };
    uint64_t raw, m = 0x0404040404040404ull;
    memcpy(&raw, b->qh, 8);
    JLCM_IN_GPR(raw);
    JLCM_IN_GPR(m);     // a register mask: gcc then folds each shift into the and
    const uint8x16_t h = vreinterpretq_u8_u64(vdupq_n_u64(raw));
    for (int k = 0; k < 4; k++) {
        if (k == 1 || k == 2) {
            i[k] = vbslq_u8(vdupq_n_u8(4), vtstq_u8(h, vld1q_u8(bits[k])), i[k]);
        } else {
            const uint64x2_t w = u64x2_from_gpr(high_word(raw, m, 2 * k), high_word(raw, m, 2 * k + 1));
            i[k] = vorrq_u8(i[k], vreinterpretq_u8_u64(w));
        }
    }
}

// The block's int8 weights (its table t looked up by the index bytes i) . activations:
// p[h] holds 4 partial sums of the h-th 32 weights.
static inline void block_dots(int8x16_t t, const uint8x16_t i[4], const block_q8_0_jlcm * y, int32x4_t p[2]) {
    p[0] = dot16(vdupq_n_s32(0), vqtbl1q_s8(t, i[0]), vld1q_s8(y[0].qs));
    p[0] = dot16(p[0], vqtbl1q_s8(t, i[1]), vld1q_s8(y[0].qs + 16));
    p[1] = dot16(vdupq_n_s32(0), vqtbl1q_s8(t, i[2]), vld1q_s8(y[1].qs));
    p[1] = dot16(p[1], vqtbl1q_s8(t, i[3]), vld1q_s8(y[1].qs + 16));
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

// acc += the dot products of two consecutive blocks a, b (activations y[0..3]): their four
// halves' sums side by side, [a0, a1, b0, b1], times [dy0 d_a, dy1 d_a, dy2 d_b, dy3 d_b] --
// one conversion and one multiply-add for 128 weights.
static inline float32x4_t pair_into(float32x4_t acc, const int32x4_t pa[2], const int32x4_t pb[2],
                                    jlcm_half da, jlcm_half db, const block_q8_0_jlcm * y) {
    const int32x4_t sums = vpaddq_s32(vpaddq_s32(pa[0], pa[1]), vpaddq_s32(pb[0], pb[1]));
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
    int32x4_t pa[2], pb[2];
    uint8x16_t i[4];
    float tail = 0.0f;
    const block_jlcm2 * const pairs_end = x + (nb & ~1);
    for (; x < pairs_end; x += 2, y += 4) {
        int8x16_t ta, tb;
        codebook_tables2(&x[0], &x[1], &ta, &tb);
        low_indices(x[0].qs, i);
        block_dots(ta, i, &y[0], pa);
        low_indices(x[1].qs, i);
        block_dots(tb, i, &y[2], pb);
        acc = pair_into(acc, pa, pb, x[0].d, x[1].d, y);
    }
    if (nb & 1) {
        low_indices(x->qs, i);
        block_dots(vreinterpretq_s8_u32(vdupq_n_u32(jlcm2_table_word(x->cb))), i, y, pa);
        tail = block_sum(pa, x->d, y);
    }
    *s = vaddvq_f32(acc) + tail;
}

void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm3 * x = (const block_jlcm3 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    const int nb = n / QK_JLCM;
    float32x4_t acc = vdupq_n_f32(0.0f);
    int32x4_t pa[2], pb[2];
    uint8x16_t i[4];
    float tail = 0.0f;
    const block_jlcm3 * const pairs_end = x + (nb & ~1);
    for (; x < pairs_end; x += 2, y += 4) {
        low_indices(x[0].qs, i);
        high_indices(&x[0], i);
        block_dots(codebook_table3(&x[0]), i, &y[0], pa);
        low_indices(x[1].qs, i);
        high_indices(&x[1], i);
        block_dots(codebook_table3(&x[1]), i, &y[2], pb);
        acc = pair_into(acc, pa, pb, x[0].d, x[1].d, y);
    }
    if (nb & 1) {
        low_indices(x->qs, i);
        high_indices(x, i);
        block_dots(codebook_table3(x), i, y, pa);
        tail = block_sum(pa, x->d, y);
    }
    *s = vaddvq_f32(acc) + tail;
}

const char * jlcm_simd_name(void) { return JLCM_HAVE_SIMD; }

#endif
