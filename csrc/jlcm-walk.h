// The quantizer's column walks (jlcm_gguf/learn.py), in C.
//
// Not a kernel of the format: llama.cpp never runs these, and the patch set does not copy this
// file. Inside a block of columns the learner walks one column at a time, and the rows do not
// interact there, so each row is a short scalar loop; in torch every column costs a dozen tiny
// operations, which made these walks a third of a default conversion on 2 cores.
//
// Both functions take what the eager loops in learn.py take, as row-major float32 arrays with
// their leading dimensions, and do the same arithmetic in the same order (no contraction into
// fused multiply-adds), so their results equal the eager loops' bit for bit
// (tests/test_learn.py).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The error-feedback assignment over one block of `width` columns, in the walk's order (JLCM._walk_block).
//   col_block (width):  the block column (scale and codebook) of each walked column; the walk may go
//                       in another order than the weight's (act order), so it is not col / 64
//   W   (rows, ld_w):   the block's columns after the earlier blocks' feedback; overwritten
//   S   (rows, nb):     block scales;  CB (rows, nb, K): each row's codebooks per block column
//   U   (width, ld_u):  the block's corner of the upper Cholesky factor of H^-1
//   idx (rows, ld_idx): receives the indices; err (rows, ld_err): the scaled errors
void jlcm_walk_feedback(int64_t rows, int width, const int64_t * col_block, int K,
                        float * W, int64_t ld_w, const float * S, int64_t nb, const float * CB,
                        const float * U, int64_t ld_u, int64_t * idx, int64_t ld_idx,
                        float * err, int64_t ld_err);

// One block of an index sweep (JLCM.sweep_indices), columns col0 .. col0 + width - 1.
//   what (rows, ld_what): the current dequantized weight, whole rows; updated in the block
//   EHb  (rows, ld_eh):   (W - W^) H at the block's columns; updated as columns move
//   H    (width, ld_h):   rows col0.. of H, from column col0;  hd: H's diagonal from col0
//   proximal: 1 scores a move by g d + H_ii d^2, 0 by g d (plain STE)
//   idx  (rows, ld_idx): indices, whole rows; D (rows, ld_d): each column's moves
void jlcm_walk_sweep(int64_t rows, int width, int64_t col0, int K, int qk, int proximal,
                     float * what, int64_t ld_what, float * EHb, int64_t ld_eh,
                     const float * S, int64_t nb, const float * CB,
                     const float * H, int64_t ld_h, const float * hd,
                     int64_t * idx, int64_t ld_idx, float * D, int64_t ld_d);

#ifdef __cplusplus
}
#endif
