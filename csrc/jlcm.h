// JLCM tensor types: block structs and the kernels' entry points.
//
// One source for both users: the Python package builds these files with cffi,
// and the llama.cpp patch set compiles the same files into ggml-cpu. The block
// layout is specified in docs/FORMAT.md; jlcm_gguf/pack.py is its numpy reference.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_JLCM 64      // weights per JLCM block
#define QK8_0_JLCM 32   // weights per Q8_0 activation block (ggml's QK8_0)

#define JLCM_TYPE_JLCM2 200   // ggml type ids, far above upstream's
#define JLCM_TYPE_JLCM3 201

typedef uint16_t jlcm_half;   // IEEE binary16 bits, as ggml_half

typedef struct {
    jlcm_half d;                 // block scale
    uint8_t   cb[2];             // codebook: 4 entries, nibble k holds entry k + 8
    uint8_t   qs[QK_JLCM/4];     // 2-bit indices; index i at bits 2*(i/16) of qs[i%16]
} block_jlcm2;

typedef struct {
    jlcm_half d;
    uint8_t   cb[4];             // 8 entries, nibble k holds entry k + 8
    uint8_t   qs[QK_JLCM/4];     // nibble i (qs[i%16] >> 4*(i/16)), i < 32: index i in bits 0-2,
                                 //   the high bit of index 32 + i in bit 3
    uint8_t   qh[QK_JLCM/8];     // low 2 bits of index 32 + j at bits 2*(j/8) of qh[j%8]
} block_jlcm3;

typedef struct {
    jlcm_half d;
    int8_t    qs[QK8_0_JLCM];
} block_q8_0_jlcm;               // ggml's block_q8_0, byte for byte

// Four activation rows' Q8_0 blocks at one column (ggml's block_q8_0x4, the repack path's gemm
// input): row m's scale d[m], its byte k at qs[32 * (k / 8) + 8 * m + k % 8].
typedef struct {
    jlcm_half d[4];
    int8_t    qs[4 * QK8_0_JLCM];
} block_q8_0x4_jlcm;

// Eight rows' JLCM2 blocks at one column, interleaved for ggml's repack path (the bytes of eight
// block_jlcm2, rearranged; rows stay JLCM2 blocks in the file). Row r of the eight has scale d[r]
// and codebook cb[2r], cb[2r+1]. Weights go in groups of 4 (g = 0..15): the index of row r's
// weight 4g + t sits at bits 2*(g%4) of qs[32*(g/4) + 4r + t], so one 32-byte load and one shift
// give the indices of group g for all eight rows, 4 consecutive weights per row.
typedef struct {
    jlcm_half d[8];
    uint8_t   cb[16];
    uint8_t   qs[128];
} block_jlcm2x8;

// Eight rows' JLCM3 blocks, interleaved likewise. Row r: scale d[r], codebook cb[4r..4r+3]. An
// 8-entry table fills half a 128-bit lane, so a pass takes four rows and 8 consecutive weights
// each: index vector v = 0..15 holds row set p = v % 2 (rows 2p, 2p+1, 4+2p, 5+2p) and weights
// 8(v/2)..8(v/2)+7; its byte j is row 4(j/16) + 2p + (j%16)/8, weight 8(v/2) + j%8. That byte's
// index has its low 2 bits at bits 2(v%4) of qs[32(v/4) + j] and its high bit at bit v%8 of
// qh[32(v/8) + j].
typedef struct {
    jlcm_half d[8];
    uint8_t   cb[32];
    uint8_t   qs[128];
    uint8_t   qh[64];
} block_jlcm3x8;

#ifdef __cplusplus
static_assert(sizeof(block_jlcm2) == 20, "wrong jlcm2 block size/padding");
static_assert(sizeof(block_jlcm3) == 30, "wrong jlcm3 block size/padding");
static_assert(sizeof(block_q8_0_jlcm) == 34, "wrong q8_0 block size/padding");
static_assert(sizeof(block_q8_0x4_jlcm) == 136, "wrong q8_0x4 block size/padding");
static_assert(sizeof(block_jlcm2x8) == 8 * sizeof(block_jlcm2), "wrong jlcm2x8 block size/padding");
static_assert(sizeof(block_jlcm3x8) == 8 * sizeof(block_jlcm3), "wrong jlcm3x8 block size/padding");
#else
_Static_assert(sizeof(block_jlcm2) == 20, "wrong jlcm2 block size/padding");
_Static_assert(sizeof(block_jlcm3) == 30, "wrong jlcm3 block size/padding");
_Static_assert(sizeof(block_q8_0_jlcm) == 34, "wrong q8_0 block size/padding");
_Static_assert(sizeof(block_q8_0x4_jlcm) == 136, "wrong q8_0x4 block size/padding");
_Static_assert(sizeof(block_jlcm2x8) == 8 * sizeof(block_jlcm2), "wrong jlcm2x8 block size/padding");
_Static_assert(sizeof(block_jlcm3x8) == 8 * sizeof(block_jlcm3), "wrong jlcm3x8 block size/padding");
#endif

// binary16 <-> binary32; the conversion to binary16 rounds to nearest even, as ggml's does
float     jlcm_fp16_to_fp32(jlcm_half h);
jlcm_half jlcm_fp32_to_fp16(float f);

// Scalar reference: the semantics every other implementation must reproduce.
// k, n: number of weights, a multiple of QK_JLCM.
void dequantize_row_jlcm2_ref(const block_jlcm2 * x, float * y, int64_t k);
void dequantize_row_jlcm3_ref(const block_jlcm3 * x, float * y, int64_t k);
// ggml's quantize_row_q8_0_ref: d = amax / 127 (stored as fp16), q = roundf(x / d)
void quantize_row_q8_0_jlcm_ref(const float * x, block_q8_0_jlcm * y, int64_t k);

// Data-free reference quantizer (per-block weighted 1-D k-means, codebook on the int4 grid),
// for ggml's from_float and quantize_chunk; imatrix may be NULL. Returns bytes written.
void   quantize_row_jlcm2_ref(const float * x, block_jlcm2 * y, int64_t k);
void   quantize_row_jlcm3_ref(const float * x, block_jlcm3 * y, int64_t k);
size_t quantize_jlcm2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_jlcm3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

// 1 when every block's scale is finite (nbytes a whole number of blocks), else 0.
int jlcm_validate_row(int type, const void * data, size_t nbytes);

// Dot products with ggml's vec_dot signature (nrc == 1; bs, bx, by unused):
// s[0] = sum over 64-weight blocks b of d_b * (d_y[2b] * isum_b,0 + d_y[2b+1] * isum_b,1),
// isum_b,h the int32 dot of the block's int8 weights h*32..h*32+31 with the activations' int8.
void vec_dot_jlcm2_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void vec_dot_jlcm3_q8_0_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);

// SIMD versions, present when the translation unit was compiled for them
// (AVX2 on x86; NEON on aarch64, with the dotprod extension when __ARM_FEATURE_DOTPROD).
void vec_dot_jlcm2_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void vec_dot_jlcm3_q8_0_simd(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);

// The repacked JLCM2 layout (block_jlcm2x8), ggml's repack-path signatures. repack: nrows (a multiple
// of 8) rows of n weights from row-major blocks; returns 0, or -1 when the shape does not fit.
// gemv: s[0..nc) = rows 0..nc (nc a multiple of 8) of vx times one Q8_0 row vy, the same sums as
// vec_dot_jlcm2_q8_0 row by row. gemm: nr (a multiple of 4) activation rows as block_q8_0x4_jlcm
// (4 rows interleaved 8 bytes at a time); s[y * bs + x] for activation row y, weight row x, the
// gemv's sums for each activation row (the reference runs the reference gemv row by row).
int  repack_jlcm2x8(block_jlcm2x8 * dst, const block_jlcm2 * src, int64_t nrows, int64_t n);
void gemv_jlcm2x8_q8_0_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemv_jlcm2x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemv_jlcm2x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemm_jlcm2x8_q8_0x4_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemm_jlcm2x8_q8_0x4_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemm_jlcm2x8_q8_0x4(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
// The same for JLCM3 (block_jlcm3x8).
int  repack_jlcm3x8(block_jlcm3x8 * dst, const block_jlcm3 * src, int64_t nrows, int64_t n);
void gemv_jlcm3x8_q8_0_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemv_jlcm3x8_q8_0_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemv_jlcm3x8_q8_0(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemm_jlcm3x8_q8_0x4_ref(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemm_jlcm3x8_q8_0x4_simd(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);
void gemm_jlcm3x8_q8_0x4(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc);

// Which SIMD path this build holds: "avx2", "neon-dotprod", "neon", or NULL (scalar only).
const char * jlcm_simd_name(void);

// The fastest compiled path (the SIMD one when present).
void vec_dot_jlcm2_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void vec_dot_jlcm3_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);

#ifdef __cplusplus
}
#endif
