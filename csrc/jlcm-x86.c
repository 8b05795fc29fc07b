// AVX2 kernels. Each 64-weight block: the codebook becomes a 16-byte int8 table
// (built in a scalar register, jlcm-impl.h), the 2-bit (3-bit) indices are spread
// to bytes, and one pshufb per 32 weights turns indices into int8 weights for
// maddubs against Q8_0.
#include "jlcm-impl.h"

#if defined(__AVX2__)
#include <immintrin.h>

#include "jlcm-half-table.h"

#define JLCM_HAVE_SIMD "avx2"

// A table word (jlcm-impl.h) in every quadword. It reaches the vector unit through memory: a
// broadcast load spends no vector ALU uop, where a move from the general register and a broadcast
// spend two (measured: 4% of the JLCM2 dot product, 3.4% of JLCM3's).
static inline __m256i broadcast64(uint64_t w) {
    double v;
    memcpy(&v, &w, 8);
    return _mm256_castpd_si256(_mm256_broadcast_sd(&v));
}

// Two JLCM2 blocks' tables from one word w (jlcm2_nibbles_pair: block a's entries in bytes
// 0-3, block b's in 4-7), two tables per block, one in each 128-bit lane: byte j of the low lane
// holds entry j % 4, of the high lane entry j / 4. An index byte's low nibble (fields 0 and 1 of qs)
// then gives weight j (field 0) in the low lane and weight 16 + j (field 1) in the high one, and its
// high nibble weights 32 + j and 48 + j: one shift and two ands spread the 64 indices (jlcm2_indices),
// where moving each field to the bottom of its byte took two variable shifts and two ands (3.5% of
// the dot product on the AMD host of 2026-12-07).
static inline void jlcm2_lane_tables(uint64_t w, __m256i * ta, __m256i * tb) {
    const __m256i spread = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
                                            0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m256i t = broadcast64(w);
    *ta = _mm256_shuffle_epi8(t, spread);
    *tb = _mm256_shuffle_epi8(t, _mm256_add_epi8(spread, _mm256_set1_epi8(4)));
}

// JLCM2's index bytes for jlcm2_lane_tables: (weights 0..31, weights 32..63).
static inline void jlcm2_indices(const uint8_t * qs, __m256i * i0, __m256i * i1) {
    const __m256i q   = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i m15 = _mm256_set1_epi8(15);
    *i0 = _mm256_and_si256(q, m15);
    *i1 = _mm256_and_si256(_mm256_srli_epi16(q, 4), m15);
}

// JLCM3's index bytes: (indices 0..31, indices 32..63). Lane l of v holds nibbles 16l..16l+15 of qs
// in the low halves of its bytes (bits 0-2: the index; bit 3: the high bit of index 32 + the nibble's
// number), and pshufb reads only bits 0-3 and 7 of an index byte, so clearing bit 7 gives indices
// 0..31 with bit 3 ignored (the table repeats every 8 bytes). Quadword k of qh >> 2k holds field k,
// the low bits of indices 32 + 8k..; v's bit 3, moved to bit 2, is their high bit. Seven vector ops
// for 64 indices, where 2-bit fields in qs and a high-bit plane in qh took eleven: the block layout
// was chosen for this (docs/FORMAT.md).
static inline void jlcm3_indices(const block_jlcm3 * b, __m256i * i0, __m256i * i1) {
    const __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b->qs));
    const __m256i v = _mm256_srlv_epi64(q, _mm256_set_epi64x(4, 4, 0, 0));
    int64_t raw;
    memcpy(&raw, b->qh, 8);
    const __m256i h = _mm256_srlv_epi64(_mm256_set1_epi64x(raw), _mm256_set_epi64x(6, 4, 2, 0));
    *i0 = _mm256_and_si256(v, _mm256_set1_epi8(15));
    *i1 = _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi8(3)),
                          _mm256_and_si256(_mm256_srli_epi16(v, 1), _mm256_set1_epi8(4)));
}

// A vector the compiler must hold in a register: gcc otherwise folds one load into both of its
// users below as memory operands, two loads where one will do (2% of the JLCM3 dot product).
#if defined(__GNUC__)
#define JLCM_IN_REG(v) __asm__("" : "+x"(v))
#else
#define JLCM_IN_REG(v) ((void)0)
#endif

// Weights . activations, 32 of each -> 8 int32 partial sums. The table gives u = weight + 8 in
// 0..15 (unsigned, as maddubs wants), and sum u a - sum 8 a = sum weight a. Taking 8 a off costs
// one more maddubs where the sign trick (|w|, a * sign w) costs two vpsignb, which compete for
// the shuffle and float ports; pair sums stay within int16 (2 * 15 * 127 + 2 * 8 * 127).
static inline __m256i dot32(__m256i u, const int8_t * y) {
    __m256i a = _mm256_loadu_si256((const __m256i *)y);
    JLCM_IN_REG(a);
    const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, a), _mm256_maddubs_epi16(_mm256_set1_epi8(8), a));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static inline float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// fp16 -> fp32, broadcast: from the table, a load with no vector uop (jlcm-half-table.h).
static inline __m256 half_broadcast(jlcm_half h) {
#if defined(JLCM_HALF_TABLE)
    return _mm256_broadcast_ss(&jlcm_half_table[h]);
#else
    return _mm256_set1_ps(jlcm_half_to_float(h));
#endif
}

// acc[h] += d * d_y[h] * (weights . activations) for the halves h = 0, 1; one accumulator
// per half, so consecutive blocks do not wait on each other's fma.
static inline void accumulate(__m256 acc[2], __m256i w0, __m256i w1, __m256 d, const block_q8_0_jlcm * y) {
    const __m256 s0 = _mm256_mul_ps(d, half_broadcast(y[0].d));
    const __m256 s1 = _mm256_mul_ps(d, half_broadcast(y[1].d));
    acc[0] = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(dot32(w0, y[0].qs)), acc[0]);
    acc[1] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(dot32(w1, y[1].qs)), acc[1]);
}

// One block into acc: its table t looked up by its index bytes (weights 0..31, 32..63), scale d.
static inline void block_into(__m256 acc[2], __m256i t, __m256i i0, __m256i i1, jlcm_half d, const block_q8_0_jlcm * y) {
    accumulate(acc, _mm256_shuffle_epi8(t, i0), _mm256_shuffle_epi8(t, i1), half_broadcast(d), y);
}

// One JLCM2 block into acc, t its lane tables (jlcm2_lane_tables).
static inline void jlcm2_block_into(__m256 acc[2], __m256i t, const block_jlcm2 * x, const block_q8_0_jlcm * y) {
    __m256i i0, i1;
    jlcm2_indices(x->qs, &i0, &i1);
    block_into(acc, t, i0, i1, x->d, y);
}

void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm2 * x = (const block_jlcm2 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    const int nb = n / QK_JLCM;
    int b = 0;
    for (; b + 1 < nb; b += 2) {     // two blocks' tables from one scalar word
        __m256i ta, tb;
        jlcm2_lane_tables(jlcm2_nibbles_pair(x[b].cb, x[b + 1].cb), &ta, &tb);
        jlcm2_block_into(acc, ta, &x[b], &y[2 * b]);
        jlcm2_block_into(acc, tb, &x[b + 1], &y[2 * b + 2]);
    }
    if (b < nb) {
        __m256i ta, tb;
        jlcm2_lane_tables(jlcm2_nibbles(x[b].cb), &ta, &tb);
        jlcm2_block_into(acc, ta, &x[b], &y[2 * b]);
    }
    *s = hsum8(_mm256_add_ps(acc[0], acc[1]));
}


void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void)bs; (void)bx; (void)by; (void)nrc;
    const block_jlcm3 * x = (const block_jlcm3 *)vx;
    const block_q8_0_jlcm * y = (const block_q8_0_jlcm *)vy;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
#pragma GCC unroll 2
    for (int b = 0; b < n / QK_JLCM; b++) {    // the table: the codebook's nibbles, repeated
        __m256i i0, i1;
        jlcm3_indices(&x[b], &i0, &i1);
        block_into(acc, broadcast64(jlcm3_nibbles(x[b].cb)), i0, i1, x[b].d, &y[2 * b]);
    }
    *s = hsum8(_mm256_add_ps(acc[0], acc[1]));
}

// ---------------------------------------------------------------------------------------
// The repacked layout (block_jlcm2x8): eight rows at once, one int32 lane per row, so no
// horizontal sums. A 128-bit lane holds four rows' tables (row r's 4 entries at bytes 4r..4r+3)
// and an index byte adds 4r to pick its row's. Entries stay unsigned (nibble = entry + 8), so
// maddubs needs no sign trick; sum (u - 8) a = sum u a - 8 sum a, with sum a once per activation
// block for all rows. Per int16 lane 8 groups add at most 8 * 2 * 15 * 127 < 2^15: no overflow.

// Eight rows' codebooks as two 16-byte tables, rows 0-3 in the low lane, 4-7 in the high one.
static inline __m256i jlcm2x8_tables(const uint8_t cb[16]) {
    const __m128i v  = _mm_loadu_si128((const __m128i *)cb);
    const __m128i m  = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(v, m);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
}

static inline __m256 jlcm2x8_scales(const jlcm_half d[8]) {
#if defined(__F16C__)
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d));
#else
    float f[8];
    for (int r = 0; r < 8; r++) f[r] = jlcm_half_to_float(d[r]);
    return _mm256_loadu_ps(f);
#endif
}

// Activations: R rows (1 for gemv's plain Q8_0 blocks, 4 for gemm's block_q8_0x4_jlcm), whose
// 8-byte chunk c of a 32-weight block lies at qs + cs * c + 8 * r (cs = 8 plain, 32 interleaved).
// The kernels below are inlined with R and cs constant; with R = 4 the index spreading and table
// lookups are shared by the four activation rows, where gemm once ran the gemv row by row.

// u * a summed over one activation block (32 weights = groups 8h..8h+7) for the eight weight rows,
// out[r] for activation row r. Per int16 lane 8 groups add at most 8 * 2 * 15 * 127 < 2^15.
static JLCM_INLINE void jlcm2x8_half(__m256i t, const uint8_t * qs, const int8_t * a, int cs, int R, __m256i out[]) {
    const __m256i m3   = _mm256_set1_epi8(3);
    const __m256i rows = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                          0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    __m256i p[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
#if defined(__clang__)
#pragma unroll
#elif defined(__GNUC__)
#pragma GCC unroll 2
#endif
    for (int m = 0; m < 2; m++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * m));
        for (int k = 0; k < 4; k++) {
            const int g = 4 * m + k;      // weights 4g..4g+3: half of chunk g / 2
            const __m256i w = _mm256_shuffle_epi8(t, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m3), rows));
            for (int r = 0; r < R; r++) {
                int32_t a4;
                memcpy(&a4, a + cs * (g / 2) + 8 * r + 4 * (g % 2), 4);
                p[r] = _mm256_add_epi16(p[r], _mm256_maddubs_epi16(w, _mm256_set1_epi32(a4)));
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = _mm256_madd_epi16(p[r], _mm256_set1_epi16(1));
}

// 8 * the sum of each activation block's int8 values, out[R * b + r]: the unsigned entries' offset,
// for all weight rows. blk: the first block's qs, step bytes apart. psadbw sums a + 128 (unsigned)
// over each quadword: 8 bytes of the plain block, or one row's chunk of an interleaved one.
static JLCM_INLINE void activation_sums8(const int8_t * blk, size_t step, int nblocks, int R, int32_t * out) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    for (int b = 0; b < nblocks; b++, blk += step) {
        __m256i acc = _mm256_setzero_si256();
        for (int c = 0; c < (R == 1 ? 1 : 4); c++) {
            const __m256i a = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 32 * c)), bias);
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(a, _mm256_setzero_si256()));
        }
        int64_t q[4];
        _mm256_storeu_si256((__m256i *)q, acc);
        if (R == 1) {
            out[b] = 8 * (int32_t)(q[0] + q[1] + q[2] + q[3] - 32 * 128);
        } else {
            for (int r = 0; r < 4; r++) out[R * b + r] = 8 * (int32_t)(q[r] - 32 * 128);
        }
    }
}

// acc (one lane per weight row) += d_row * (d_y0 * (sums0 - 8 sum a_0) + d_y1 * (sums1 - 8 sum a_1))
static inline __m256 jlcm_x8_accumulate(__m256 acc, __m256i sums0, __m256i sums1, int32_t asum8_0, int32_t asum8_1,
                                        jlcm_half dy0, jlcm_half dy1, __m256 d) {
    const __m256i i0 = _mm256_sub_epi32(sums0, _mm256_set1_epi32(asum8_0));
    const __m256i i1 = _mm256_sub_epi32(sums1, _mm256_set1_epi32(asum8_1));
    __m256 f = _mm256_mul_ps(half_broadcast(dy1), _mm256_cvtepi32_ps(i1));
    f = _mm256_fmadd_ps(half_broadcast(dy0), _mm256_cvtepi32_ps(i0), f);
    return _mm256_fmadd_ps(d, f, acc);
}

// JLCM3 (block_jlcm3x8): a 128-bit lane's table holds two rows' 8 entries (bytes 0-7, 8-15), so a
// pass takes four rows (row set p) and 8 weights of each, and an index byte adds 8 for its lane's
// second row. Each row owns two int32 lanes per row set; one hadd per half puts the eight rows in order.
static inline void jlcm3x8_tables(const uint8_t cb[32], __m256i * t0, __m256i * t1) {
    const __m256i v  = _mm256_loadu_si256((const __m256i *)cb);
    const __m256i m  = _mm256_set1_epi8(15);
    const __m256i lo = _mm256_and_si256(v, m);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    *t0 = _mm256_unpacklo_epi8(lo, hi);      // rows 0, 1 | 4, 5
    *t1 = _mm256_unpackhi_epi8(lo, hi);      // rows 2, 3 | 6, 7
}

// Index vectors v = 8h .. 8h+7 of one half: low bits in the half's 64 bytes of qs (bits 2(v%4) of
// vector v%8/4), high bit v%8 of the half's 32 bytes of qh, moved to bit 2. Vector v covers chunk v / 2.
static JLCM_INLINE void jlcm3x8_half(__m256i t0, __m256i t1, const uint8_t * qs, const uint8_t * qh,
                                const int8_t * a, int cs, int R, __m256i out[]) {
    const __m256i m3   = _mm256_set1_epi8(3);
    const __m256i m4   = _mm256_set1_epi8(4);
    const __m256i rows = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8,
                                          0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8);
    const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
    __m256i acc[4][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    // unrolled: every shift count is then an immediate, and acc[r][k % 2] a register
#if defined(__clang__)
#pragma unroll
#elif defined(__GNUC__)
#pragma GCC unroll 8
#endif
    for (int k = 0; k < 8; k++) {
        const __m256i q  = _mm256_loadu_si256((const __m256i *)(qs + 32 * (k / 4)));
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (k % 4)), m3);
        const __m256i hs = k < 2 ? _mm256_slli_epi16(h, 2 - k) : _mm256_srli_epi16(h, k - 2);
        const __m256i idx = _mm256_or_si256(_mm256_or_si256(lo, _mm256_and_si256(hs, m4)), rows);
        const __m256i w = _mm256_shuffle_epi8(k % 2 ? t1 : t0, idx);
        for (int r = 0; r < R; r++) {
            int64_t a8;
            memcpy(&a8, a + cs * (k / 2) + 8 * r, 8);
            acc[r][k % 2] = _mm256_add_epi16(acc[r][k % 2], _mm256_maddubs_epi16(w, _mm256_set1_epi64x(a8)));
        }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < R; r++) out[r] = _mm256_hadd_epi32(_mm256_madd_epi16(acc[r][0], ones), _mm256_madd_epi16(acc[r][1], ones));
}

// Both layouts, R activation rows at a time (gemv: R = 1; gemm: R = 4, nr / 4 passes); jlcm3 and R
// are constants in each caller, so each copy keeps only its own code.
static JLCM_INLINE void x8_kernel(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc, int jlcm3, int R) {
    const int nb = n / QK_JLCM;
    const int cs = R == 1 ? 8 : 32;
    const size_t ystep = R == 1 ? sizeof(block_q8_0_jlcm) : sizeof(block_q8_0x4_jlcm);
    const size_t qs_at = R == 1 ? offsetof(block_q8_0_jlcm, qs) : offsetof(block_q8_0x4_jlcm, qs);
    int32_t asum8[4 * 2 * nb];
    for (int yr = 0; yr < (R == 1 ? 1 : nr / 4); yr++) {
        const uint8_t * y = (const uint8_t *)vy + (size_t)yr * 2 * nb * ystep;
        activation_sums8((const int8_t *)(y + qs_at), ystep, 2 * nb, R, asum8);
        for (int x = 0; x < nc / 8; x++) {
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int b = 0; b < nb; b++) {
                const uint8_t * y0 = y + 2 * b * ystep, * y1 = y0 + ystep;
                const int8_t * a0 = (const int8_t *)(y0 + qs_at), * a1 = (const int8_t *)(y1 + qs_at);
                __m256i sums0[4], sums1[4];
                const jlcm_half * d;
                if (jlcm3) {
                    const block_jlcm3x8 * blk = (const block_jlcm3x8 *)vx + (size_t)x * nb + b;
                    __m256i t0, t1;
                    jlcm3x8_tables(blk->cb, &t0, &t1);
                    jlcm3x8_half(t0, t1, blk->qs, blk->qh, a0, cs, R, sums0);
                    jlcm3x8_half(t0, t1, blk->qs + 64, blk->qh + 32, a1, cs, R, sums1);
                    d = blk->d;
                } else {
                    const block_jlcm2x8 * blk = (const block_jlcm2x8 *)vx + (size_t)x * nb + b;
                    const __m256i t = jlcm2x8_tables(blk->cb);
                    jlcm2x8_half(t, blk->qs, a0, cs, R, sums0);
                    jlcm2x8_half(t, blk->qs + 64, a1, cs, R, sums1);
                    d = blk->d;
                }
                const __m256 dx = jlcm2x8_scales(d);
                for (int r = 0; r < R; r++) {
                    jlcm_half dy0, dy1;     // plain: d at offset 0; interleaved: d[r]
                    memcpy(&dy0, y0 + 2 * (R == 1 ? 0 : r), 2);
                    memcpy(&dy1, y1 + 2 * (R == 1 ? 0 : r), 2);
                    acc[r] = jlcm_x8_accumulate(acc[r], sums0[r], sums1[r], asum8[R * 2 * b + r], asum8[R * (2 * b + 1) + r], dy0, dy1, dx);
                }
            }
            for (int r = 0; r < R; r++) _mm256_storeu_ps(s + (size_t)(R * yr + r) * bs + 8 * x, acc[r]);
        }
    }
}

void gemv_jlcm2x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    x8_kernel(n, s, bs, vx, vy, nr, nc, 0, 1);
}

void gemv_jlcm3x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    x8_kernel(n, s, bs, vx, vy, nr, nc, 1, 1);
}

void gemm_jlcm2x8_q8_0x4_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    x8_kernel(n, s, bs, vx, vy, nr, nc, 0, 4);
}

void gemm_jlcm3x8_q8_0x4_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {
    x8_kernel(n, s, bs, vx, vy, nr, nc, 1, 4);
}

const char * jlcm_simd_name(void) { return JLCM_HAVE_SIMD; }

#endif
