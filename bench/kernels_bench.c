// vec_dot timing, JLCM beside ggml's own types, in one process and one run.
// Built and run by bench/kernels.py against the pinned llama.cpp's static ggml, with
// ggml's x86 flags. Prints one JSON object: ns per 256 weights (the gemm rows: per 256 weights and
// activation row), median over rounds.
#include "ggml.h"
#include "ggml-cpu.h"
#include "jlcm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_PER_ROW 4096   // a Llama-7B row; a multiple of 256 (k-quants) and of 64 (JLCM)
#define ROWS      32     // weights stay in L2, as the rows of one thread's share do
#define ROUNDS    301
#define ACT_ROWS  4      // the gemm's activation rows: one block_q8_0x4 row, as ggml hands them over

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef void (*gemv_fn)(int, float *, size_t, const void *, const void *, int, int);

// ggml's AVX2 gemv and gemm for Q4_0 repacked 8 rows at a time, and its quantizer of four
// activation rows into block_q8_0x4 (ggml-cpu/repack.h, C linkage)
void ggml_gemv_q4_0_8x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void ggml_gemm_q4_0_8x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void ggml_quantize_mat_q8_0_4x8(const float * x, void * vy, int64_t k);

typedef struct {
    const char * name;
    size_t       row_bytes;
    void       * w;
    void       * a;
    vec_dot_fn   dot;
    gemv_fn      gemv;           // set: one call does all ROWS rows (the repacked layouts)
    gemv_fn      gemm;           // set: one call does all ROWS rows times ACT_ROWS activation rows
    double       ns[ROUNDS];
} kernel;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static float * random_floats(int n, unsigned seed) {
    float * x = malloc(sizeof(float) * (size_t)n);
    srand(seed);
    for (int i = 0; i < n; i++) {   // roughly normal: sum of uniforms
        float s = 0;
        for (int k = 0; k < 4; k++) s += (float)rand() / RAND_MAX - 0.5f;
        x[i] = s;
    }
    return x;
}

static void setup_ggml(kernel * k, enum ggml_type type, const float * w, const float * x) {
    const struct ggml_type_traits_cpu * tr = ggml_get_type_traits_cpu(type);
    k->name = ggml_type_name(type);
    k->row_bytes = ggml_row_size(type, N_PER_ROW);
    k->w = malloc(k->row_bytes * ROWS);
    float * imatrix = NULL;
    if (ggml_quantize_requires_imatrix(type)) {
        imatrix = malloc(sizeof(float) * N_PER_ROW);
        for (int i = 0; i < N_PER_ROW; i++) imatrix[i] = 1.0f;
    }
    ggml_quantize_chunk(type, w, k->w, 0, ROWS, N_PER_ROW, imatrix);
    free(imatrix);
    k->a = malloc(ggml_row_size(tr->vec_dot_type, N_PER_ROW));
    ggml_get_type_traits_cpu(tr->vec_dot_type)->from_float(x, k->a, N_PER_ROW);
    k->dot = tr->vec_dot;
}

// JLCM rows: random indices and codebooks (every byte pattern is valid), scales ~ 0.01.
static void setup_jlcm(kernel * k, const char * name, size_t block_bytes, vec_dot_fn dot, const float * x) {
    k->name = name;
    k->row_bytes = block_bytes * (N_PER_ROW / QK_JLCM);
    uint8_t * w = malloc(k->row_bytes * ROWS);
    for (size_t i = 0; i < k->row_bytes * ROWS; i++) w[i] = (uint8_t)rand();
    for (size_t b = 0; b < (size_t)ROWS * (N_PER_ROW / QK_JLCM); b++) {
        const jlcm_half d = jlcm_fp32_to_fp16(0.01f * (1 + (float)rand() / RAND_MAX));
        memcpy(w + b * block_bytes, &d, 2);
    }
    k->w = w;
    k->a = malloc(ggml_row_size(GGML_TYPE_Q8_0, N_PER_ROW));
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float(x, k->a, N_PER_ROW);
    k->dot = dot;
}

// The repack path's layouts: JLCM rows interleaved by repack_jlcm2x8 / repack_jlcm3x8; Q4_0's block_q4_0x8
// (8 fp16 scales + 128 bytes of nibbles per 8 rows x 32 weights) filled at random, valid scales.
static void setup_x8(kernel * k, const kernel * rows, const char * name, int jlcm3) {
    k->name = name;
    k->row_bytes = rows->row_bytes;
    k->w = malloc(k->row_bytes * ROWS);
    if (jlcm3) repack_jlcm3x8(k->w, rows->w, ROWS, N_PER_ROW);
    else       repack_jlcm2x8(k->w, rows->w, ROWS, N_PER_ROW);
    k->a = rows->a;
    k->gemv = jlcm3 ? gemv_jlcm3x8_q8_0 : gemv_jlcm2x8_q8_0;
}

static void setup_q4_0x8(kernel * k, const float * x) {
    k->name = "Q4_0x8";
    k->row_bytes = ggml_row_size(GGML_TYPE_Q4_0, N_PER_ROW);
    uint8_t * w = malloc(k->row_bytes * ROWS);
    for (size_t i = 0; i < k->row_bytes * ROWS; i++) w[i] = (uint8_t)rand();
    for (size_t b = 0; b < (size_t)ROWS / 8 * (N_PER_ROW / 32); b++) {
        for (int r = 0; r < 8; r++) {
            const ggml_fp16_t d = ggml_fp32_to_fp16(0.01f * (1 + (float)rand() / RAND_MAX));
            memcpy(w + b * 144 + 2 * r, &d, 2);
        }
    }
    k->w = w;
    k->a = malloc(ggml_row_size(GGML_TYPE_Q8_0, N_PER_ROW));
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float(x, k->a, N_PER_ROW);
    k->gemv = ggml_gemv_q4_0_8x8_q8_0;
}

// The same weights through the repack path's gemm: four activation rows (x4: ggml's block_q8_0x4).
static void setup_gemm(kernel * k, const kernel * gemv, const char * name, gemv_fn gemm, const void * x4) {
    *k = *gemv;
    k->name = name;
    k->a = (void *)x4;
    k->gemv = NULL;
    k->gemm = gemm;
}

static int cmp_double(const void * a, const void * b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void) {
    ggml_cpu_init();
    float * w = random_floats(N_PER_ROW * ROWS, 1);
    float * x = random_floats(N_PER_ROW, 2);
    const enum ggml_type stock[] = {GGML_TYPE_Q4_0, GGML_TYPE_IQ4_NL, GGML_TYPE_Q2_K, GGML_TYPE_IQ2_XS, GGML_TYPE_IQ3_XXS};
    const int n_stock = sizeof(stock) / sizeof(stock[0]);
    kernel ks[16];
    int nk = 0;
    setup_jlcm(&ks[nk++], "JLCM2", sizeof(block_jlcm2), vec_dot_jlcm2_q8_0, x);
    setup_jlcm(&ks[nk++], "JLCM3", sizeof(block_jlcm3), vec_dot_jlcm3_q8_0, x);
    for (int i = 0; i < n_stock; i++) setup_ggml(&ks[nk++], stock[i], w, x);
    setup_x8(&ks[nk++], &ks[0], "JLCM2x8", 0);
    setup_x8(&ks[nk++], &ks[1], "JLCM3x8", 1);
    setup_q4_0x8(&ks[nk++], x);
    float * x4 = random_floats(ACT_ROWS * N_PER_ROW, 3);
    void * a4 = malloc(ggml_row_size(GGML_TYPE_Q8_0, N_PER_ROW) * ACT_ROWS);
    ggml_quantize_mat_q8_0_4x8(x4, a4, N_PER_ROW);
    const int nx8 = nk;
    setup_gemm(&ks[nk++], &ks[nx8 - 3], "JLCM2x8", gemm_jlcm2x8_q8_0x4, a4);
    setup_gemm(&ks[nk++], &ks[nx8 - 2], "JLCM3x8", gemm_jlcm3x8_q8_0x4, a4);
    setup_gemm(&ks[nk++], &ks[nx8 - 1], "Q4_0x8", ggml_gemm_q4_0_8x8_q8_0, a4);

    volatile float sink = 0;
    for (int round = -20; round < ROUNDS; round++) {      // 20 warm-up rounds
        for (int j = 0; j < nk; j++) {
            kernel * k = &ks[(j + (round & 0xff)) % nk];   // rotate the order: no kernel always first
            float s, sum = 0;
            const double t0 = now_ns();
            int act_rows = 1;
            for (int reps = 0; reps < 4; reps++) {
                if (k->gemm) {
                    float out[ACT_ROWS * ROWS];
                    k->gemm(N_PER_ROW, out, ROWS, k->w, k->a, ACT_ROWS, ROWS);
                    sum += out[reps];
                    act_rows = ACT_ROWS;
                    continue;
                }
                if (k->gemv) {
                    float out[ROWS];
                    k->gemv(N_PER_ROW, out, 0, k->w, k->a, 1, ROWS);
                    sum += out[reps];
                    continue;
                }
                for (int r = 0; r < ROWS; r++) {
                    k->dot(N_PER_ROW, &s, 0, (const char *)k->w + r * k->row_bytes, 0, k->a, 0, 1);
                    sum += s;
                }
            }
            const double t1 = now_ns();
            sink += sum;
            if (round >= 0) k->ns[round] = (t1 - t0) / (4.0 * act_rows * ROWS * N_PER_ROW / 256.0);
        }
    }
    printf("{\"n_per_row\": %d, \"rows\": %d, \"rounds\": %d, \"simd\": \"%s\", \"kernels\": [", N_PER_ROW, ROWS, ROUNDS,
           jlcm_simd_name() ? jlcm_simd_name() : "none");
    for (int j = 0; j < nk; j++) {
        qsort(ks[j].ns, ROUNDS, sizeof(double), cmp_double);
        printf("%s{\"type\": \"%s\", \"path\": \"%s\", \"ns_per_256\": %.3f, \"ns_per_256_p10\": %.3f, \"ns_per_256_p90\": %.3f}",
               j ? ", " : "", ks[j].name, ks[j].gemm ? "gemm" : ks[j].gemv ? "gemv" : "vec_dot", ks[j].ns[ROUNDS / 2], ks[j].ns[ROUNDS / 10], ks[j].ns[ROUNDS * 9 / 10]);
    }
    printf("]}\n");
    (void)sink;
    return 0;
}
