// Test driver for the kernels, for every build the Python binding cannot reach:
// aarch64 under qemu (dotprod and plain NEON) and the sanitizer build.
//
//   test-jlcm             self-checks: SIMD == scalar exactly on blocks whose float
//                         arithmetic is exact (so any difference is in the integer
//                         part), for every type and row length; adversarial blocks
//                         against a float64 reference
//   test-jlcm VECTORS     also checks vectors written by the numpy reference
//                         (tests/test_kernels.py): dequantize and Q8_0 bit-exact,
//                         vec_dot within its float64 bound
#include "jlcm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); } } while (0)

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t next_u64(void) {          // splitmix64
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static int rand_int(int lo, int hi) { return lo + (int)(next_u64() % (uint64_t)(hi - lo + 1)); }

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

typedef struct {
    const char * name;
    int          type_size;
    int          cb_bytes;
    vec_dot_fn   ref, simd, fastest;   // fastest: the entry point ggml calls
    void       (*dequant)(const void *, float *, int64_t);
} type_info;

static void dq2(const void * x, float * y, int64_t k) { dequantize_row_jlcm2_ref((const block_jlcm2 *)x, y, k); }
static void dq3(const void * x, float * y, int64_t k) { dequantize_row_jlcm3_ref((const block_jlcm3 *)x, y, k); }

static const type_info TYPES[2] = {
    {"JLCM2", sizeof(block_jlcm2), 2, vec_dot_jlcm2_q8_0_ref, vec_dot_jlcm2_q8_0_simd, vec_dot_jlcm2_q8_0, dq2},
    {"JLCM3", sizeof(block_jlcm3), 4, vec_dot_jlcm3_q8_0_ref, vec_dot_jlcm3_q8_0_simd, vec_dot_jlcm3_q8_0, dq3},
};

static const int ROW_LENGTHS[] = {64, 576, 704, 1536, 4096, 11008};   // 704: 11 blocks, every loop remainder

// float64 reference of vec_dot from the dequantized weights, and the bound on the
// float32 kernels' error: gamma_m * sum |terms|, m = 2 * blocks + 8 roundings deep.
static double dot_reference(const type_info * t, const uint8_t * x, const block_q8_0_jlcm * y, int n, double * bound,
                            double * magnitude) {
    float * w = malloc(sizeof(float) * (size_t)n);
    t->dequant(x, w, n);
    double sum = 0, abs_sum = 0;
    for (int i = 0; i < n; i++) {
        const double v = (double)w[i] * (double)y[i / 32].qs[i % 32] * (double)jlcm_fp16_to_fp32(y[i / 32].d);
        sum += v;
        abs_sum += fabs(v);
    }
    free(w);
    const double m = 2.0 * n / QK_JLCM + 8;
    *bound = m * 0x1p-24 / (1 - m * 0x1p-24) * abs_sum;
    if (magnitude) *magnitude = abs_sum;
    return sum;
}

// Random blocks whose float arithmetic is exact: every scale is +-2^e with e in
// [e0, e0 + 1] (activations: 2^e0), so each term is an integer multiple of 2^(2 e0) and the sums stay
// below 2^24 such units (checked).
static void check_simd_equals_scalar(const type_info * t, int n, int trial) {
    const int nb = n / QK_JLCM;
    uint8_t * x = malloc((size_t)nb * t->type_size);
    block_q8_0_jlcm * y = malloc(sizeof(block_q8_0_jlcm) * (size_t)(n / 32));
    const int e0 = rand_int(-12, -2);
    for (int b = 0; b < nb; b++) {
        uint8_t * blk = x + (size_t)b * t->type_size;
        for (int j = 2; j < t->type_size; j++) blk[j] = (uint8_t)next_u64();
        const float d = ldexpf(next_u64() & 1 ? -1.0f : 1.0f, e0 + rand_int(0, 1));
        const jlcm_half h = jlcm_fp32_to_fp16(d);
        memcpy(blk, &h, 2);
    }
    for (int b = 0; b < n / 32; b++) {
        y[b].d = jlcm_fp32_to_fp16(ldexpf(1.0f, e0));
        for (int j = 0; j < 32; j++) y[b].qs[j] = (int8_t)rand_int(-127, 127);
    }
    float r, s, f;
    t->ref(n, &r, 0, x, 0, y, 0, 1);
    t->simd(n, &s, 0, x, 0, y, 0, 1);
    t->fastest(n, &f, 0, x, 0, y, 0, 1);
    CHECK(f == s, "%s n=%d trial %d: vec_dot %.9g != simd %.9g", t->name, n, trial, f, s);
    double bound, magnitude;
    const double want = dot_reference(t, x, y, n, &bound, &magnitude);
    // every partial sum is at most `magnitude`, in units of 2^(2 e0): exact while below 2^24 units
    CHECK(magnitude * ldexp(1.0, -2 * e0) < 0x1p24, "%s n=%d trial %d: test data not exact", t->name, n, trial);
    CHECK(r == s, "%s n=%d trial %d: simd %.9g != scalar %.9g", t->name, n, trial, s, r);
    CHECK(r == want, "%s n=%d trial %d: scalar %.9g != exact %.17g", t->name, n, trial, r, want);
    free(x);
    free(y);
}

// The repacked layouts (block_jlcm2x8, block_jlcm3x8): 16 rows (two groups of eight) through
// repack + gemv and through gemm (each scalar and the build's fastest) with eight activation rows,
// two passes of four interleaved, each equal to the row's vec_dot reference on exact data (the same integers, so only float
// order could differ, and on exact data it cannot).
typedef struct {
    const type_info * t;
    int  (*repack)(void *, const void *, int64_t, int64_t);
    void (*gemv_ref)(int, float *, size_t, const void *, const void *, int, int);
    void (*gemv)(int, float *, size_t, const void *, const void *, int, int);
    void (*gemm_ref)(int, float *, size_t, const void *, const void *, int, int);
    void (*gemm)(int, float *, size_t, const void *, const void *, int, int);
} repack_info;

static int repack2(void * d, const void * s, int64_t r, int64_t n) { return repack_jlcm2x8(d, s, r, n); }
static int repack3(void * d, const void * s, int64_t r, int64_t n) { return repack_jlcm3x8(d, s, r, n); }

static const repack_info REPACKS[2] = {
    {&TYPES[0], repack2, gemv_jlcm2x8_q8_0_ref, gemv_jlcm2x8_q8_0, gemm_jlcm2x8_q8_0x4_ref, gemm_jlcm2x8_q8_0x4},
    {&TYPES[1], repack3, gemv_jlcm3x8_q8_0_ref, gemv_jlcm3x8_q8_0, gemm_jlcm3x8_q8_0x4_ref, gemm_jlcm3x8_q8_0x4},
};

static void check_repack(const repack_info * ri, int n, int trial) {
    enum { ROWS = 16, ACT = 8 };      // two gemm passes of 4 activation rows
    const type_info * t = ri->t;
    const int nb = n / QK_JLCM, ny = n / 32;
    const size_t row_bytes = (size_t)nb * t->type_size;
    uint8_t * x = malloc(row_bytes * ROWS), * packed = malloc(row_bytes * ROWS);
    block_q8_0_jlcm * y = malloc(sizeof(block_q8_0_jlcm) * (size_t)(ACT * ny));
    block_q8_0x4_jlcm * y4 = malloc(sizeof(block_q8_0x4_jlcm) * (size_t)(ACT / 4 * ny));
    float * want = malloc(sizeof(float) * ACT * ROWS), * got = malloc(sizeof(float) * ACT * ROWS);
    const int e0 = rand_int(-12, -2);
    for (int b = 0; b < ROWS * nb; b++) {
        uint8_t * blk = x + (size_t)b * t->type_size;
        for (int j = 2; j < t->type_size; j++) blk[j] = (uint8_t)next_u64();
        const jlcm_half d = jlcm_fp32_to_fp16(ldexpf(next_u64() & 1 ? -1.0f : 1.0f, e0 + rand_int(0, 1)));
        memcpy(blk, &d, 2);
    }
    for (int b = 0; b < ACT * ny; b++) {
        y[b].d = jlcm_fp32_to_fp16(ldexpf(1.0f, e0 + rand_int(0, 1)));
        for (int j = 0; j < 32; j++) y[b].qs[j] = (int8_t)rand_int(-127, 127);
    }
    for (int b = 0; b < ACT / 4 * ny; b++) {
        for (int m = 0; m < 4; m++) {
            const block_q8_0_jlcm * src = &y[(4 * (b / ny) + m) * ny + b % ny];
            y4[b].d[m] = src->d;
            for (int k = 0; k < 32; k++) y4[b].qs[32 * (k / 8) + 8 * m + k % 8] = src->qs[k];
        }
    }
    CHECK(ri->repack(packed, x, ROWS, n) == 0, "%s repack n=%d: refused", t->name, n);
    CHECK(ri->repack(packed, x, ROWS - 4, n) == -1, "%s repack n=%d: accepted 12 rows", t->name, n);
    for (int m = 0; m < ACT; m++) {
        for (int r = 0; r < ROWS; r++) t->ref(n, &want[m * ROWS + r], 0, x + r * row_bytes, 0, y + m * ny, 0, 1);
    }
    ri->gemv_ref(n, got, 0, packed, y, 1, ROWS);
    for (int r = 0; r < ROWS; r++) CHECK(got[r] == want[r], "%s gemv ref n=%d trial %d row %d: %.9g != %.9g", t->name, n, trial, r, got[r], want[r]);
    ri->gemv(n, got, 0, packed, y, 1, ROWS);
    for (int r = 0; r < ROWS; r++) CHECK(got[r] == want[r], "%s gemv n=%d trial %d row %d: %.9g != %.9g", t->name, n, trial, r, got[r], want[r]);
    memset(got, 0, sizeof(float) * ACT * ROWS);
    ri->gemm_ref(n, got, ROWS, packed, y4, ACT, ROWS);
    for (int i = 0; i < ACT * ROWS; i++) CHECK(got[i] == want[i], "%s gemm ref n=%d trial %d out %d: %.9g != %.9g", t->name, n, trial, i, got[i], want[i]);
    memset(got, 0, sizeof(float) * ACT * ROWS);
    ri->gemm(n, got, ROWS, packed, y4, ACT, ROWS);
    for (int i = 0; i < ACT * ROWS; i++) CHECK(got[i] == want[i], "%s gemm n=%d trial %d out %d: %.9g != %.9g", t->name, n, trial, i, got[i], want[i]);
    free(x); free(packed); free(y); free(y4); free(want); free(got);
}

// Adversarial blocks: extreme codebook entries with extreme activations, every
// index equal, fp16 scale extremes, zeros. SIMD and scalar within the bound of float64.
static void check_adversarial(const type_info * t, int n, int kind) {
    const int nb = n / QK_JLCM;
    uint8_t * x = calloc((size_t)nb, t->type_size);
    block_q8_0_jlcm * y = calloc((size_t)(n / 32), sizeof(block_q8_0_jlcm));
    const jlcm_half d_cases[] = {0x3c00 /* 1 */, 0x7bff /* 65504 */, 0x0001 /* 2^-24 */, 0x0400 /* 2^-14 */,
                                 0x0000 /* 0 */, 0xbc00 /* -1 */, 0x8000 /* -0 */};
    for (int b = 0; b < nb; b++) {
        uint8_t * blk = x + (size_t)b * t->type_size;
        const uint8_t nib = kind % 2 ? 0x00 : 0xff;               // all entries -8, or all 7
        memset(blk + 2, nib, (size_t)t->cb_bytes);
        if (kind >= 2) for (int j = 2; j < 2 + t->cb_bytes; j++) blk[j] = (uint8_t)next_u64();
        const uint8_t idx = kind == 2 ? 0x00 : 0xff;               // every index 0, or every index max
        memset(blk + 2 + t->cb_bytes, idx, (size_t)(t->type_size - 2 - t->cb_bytes));
        memcpy(blk, &d_cases[(b + kind) % 7], 2);
    }
    for (int b = 0; b < n / 32; b++) {
        y[b].d = d_cases[(3 * b + kind) % 7];
        for (int j = 0; j < 32; j++) y[b].qs[j] = kind == 4 ? 0 : (int8_t)((b + j + kind) % 2 ? 127 : -127);
    }
    float r, s;
    t->ref(n, &r, 0, x, 0, y, 0, 1);
    t->simd(n, &s, 0, x, 0, y, 0, 1);
    double bound;
    const double want = dot_reference(t, x, y, n, &bound, NULL);
    CHECK(fabs(r - want) <= bound, "%s n=%d adversarial %d: scalar %.9g, float64 %.17g, bound %.3g", t->name, n, kind, r, want, bound);
    CHECK(fabs(s - want) <= bound, "%s n=%d adversarial %d: simd %.9g, float64 %.17g, bound %.3g", t->name, n, kind, s, want, bound);
    free(x);
    free(y);
}

// Vectors from the numpy reference: records of
//   u32 kind (200, 201: JLCM2/3; 8: Q8_0), u32 n, then
//   JLCM: blocks, float32[n] dequantized, Q8_0 activations, f64 dot, f64 bound
//   Q8_0: float32[n] input, Q8_0 blocks
static int check_vectors(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); return 1; }
    uint32_t head[2];
    int records = 0;
    while (fread(head, 4, 2, f) == 2) {
        const uint32_t kind = head[0];
        const int n = (int)head[1];
        const size_t q8_bytes = (size_t)(n / 32) * sizeof(block_q8_0_jlcm);
        if (kind == 8) {
            float * xin = malloc(4 * (size_t)n);
            uint8_t * want = malloc(q8_bytes), * got = malloc(q8_bytes);
            CHECK(fread(xin, 4, (size_t)n, f) == (size_t)n && fread(want, 1, q8_bytes, f) == q8_bytes, "short file");
            quantize_row_q8_0_jlcm_ref(xin, (block_q8_0_jlcm *)got, n);
            CHECK(memcmp(want, got, q8_bytes) == 0, "Q8_0 n=%d differs from the numpy reference", n);
            free(xin); free(want); free(got);
        } else {
            CHECK(kind == JLCM_TYPE_JLCM2 || kind == JLCM_TYPE_JLCM3, "unknown record kind %u", kind);
            if (kind != JLCM_TYPE_JLCM2 && kind != JLCM_TYPE_JLCM3) break;
            const type_info * t = &TYPES[kind - JLCM_TYPE_JLCM2];
            const size_t xb = (size_t)(n / QK_JLCM) * t->type_size;
            uint8_t * x = malloc(xb);
            float * want = malloc(4 * (size_t)n), * got = malloc(4 * (size_t)n);
            block_q8_0_jlcm * y = malloc(q8_bytes);
            double dot[2];
            CHECK(fread(x, 1, xb, f) == xb && fread(want, 4, (size_t)n, f) == (size_t)n &&
                  fread(y, 1, q8_bytes, f) == q8_bytes && fread(dot, 8, 2, f) == 2, "short file");
            t->dequant(x, got, n);
            CHECK(memcmp(want, got, 4 * (size_t)n) == 0, "%s n=%d: dequantize differs from the numpy reference", t->name, n);
            float r, s;
            t->ref(n, &r, 0, x, 0, y, 0, 1);
            t->simd(n, &s, 0, x, 0, y, 0, 1);
            CHECK(fabs(r - dot[0]) <= dot[1], "%s n=%d: scalar %.9g, float64 %.17g, bound %.3g", t->name, n, r, dot[0], dot[1]);
            CHECK(fabs(s - dot[0]) <= dot[1], "%s n=%d: simd %.9g, float64 %.17g, bound %.3g", t->name, n, s, dot[0], dot[1]);
            free(x); free(want); free(got); free(y);
        }
        records++;
    }
    fclose(f);
    printf("vectors: %d records\n", records);
    return records > 0 ? 0 : 1;
}

int main(int argc, char ** argv) {
    const char * simd = jlcm_simd_name();
    printf("simd: %s\n", simd ? simd : "none");
    int checks = 0;
    for (int ti = 0; ti < 2; ti++) {
        for (size_t li = 0; li < sizeof(ROW_LENGTHS) / sizeof(ROW_LENGTHS[0]); li++) {
            for (int trial = 0; trial < 25; trial++, checks++) check_simd_equals_scalar(&TYPES[ti], ROW_LENGTHS[li], trial);
            for (int kind = 0; kind < 5; kind++, checks++) check_adversarial(&TYPES[ti], ROW_LENGTHS[li], kind);
        }
    }
    for (size_t li = 0; li < sizeof(ROW_LENGTHS) / sizeof(ROW_LENGTHS[0]); li++) {
        for (int ri = 0; ri < 2; ri++) {
            for (int trial = 0; trial < 5; trial++, checks++) check_repack(&REPACKS[ri], ROW_LENGTHS[li], trial);
        }
    }
    // fp16 conversions: every binary16 survives the round trip
    for (uint32_t h = 0; h < 0x10000; h++) {
        const float f = jlcm_fp16_to_fp32((jlcm_half)h);
        if (f == f) CHECK(jlcm_fp32_to_fp16(f) == h, "fp16 round trip of 0x%04x", h);
    }
    checks++;
    if (argc > 1 && check_vectors(argv[1])) failures++;
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
