// The quantizer's column walks; see jlcm-walk.h. Each statement is one torch operation of the
// eager loop in jlcm_gguf/learn.py, rounded where torch rounds it: contraction into fused
// multiply-adds would change the last bit and, through the argmins, the codes.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && !defined(__STRICT_ANSI__)
#error "build jlcm-walk.c with -std=c11: in its GNU modes GCC contracts a*b+c into fused multiply-adds"
#endif

#include "jlcm-walk.h"

#include <math.h>

// The first codeword of cb[0..K) nearest to z, as torch's argmin picks among equals.
static int nearest(float z, const float * cb, int K) {
    int best = 0;
    float best_dist = fabsf(z - cb[0]);
    for (int k = 1; k < K; k++) {
        const float dist = fabsf(z - cb[k]);
        if (dist < best_dist) {
            best_dist = dist;
            best = k;
        }
    }
    return best;
}

void jlcm_walk_feedback(int64_t rows, int width, const int64_t * col_block, int K,
                        float * W, int64_t ld_w, const float * S, int64_t nb, const float * CB,
                        const float * U, int64_t ld_u, int64_t * idx, int64_t ld_idx,
                        float * err, int64_t ld_err) {
    for (int64_t r = 0; r < rows; r++) {
        float * w = W + r * ld_w;
        for (int j = 0; j < width; j++) {
            const int64_t blk = col_block[j];
            const float s = S[r * nb + blk];
            const float * cb = CB + (r * nb + blk) * K;
            const int k = nearest(w[j] / s, cb, K);
            const float q = s * cb[k];
            const float e = (w[j] - q) / U[j * ld_u + j];
            const float * u = U + j * ld_u;
            for (int t = j; t < width; t++) {
                const float step = e * u[t];
                w[t] = w[t] - step;
            }
            idx[r * ld_idx + j] = k;
            err[r * ld_err + j] = e;
        }
    }
}

void jlcm_walk_sweep(int64_t rows, int width, int64_t col0, int K, int qk, int proximal,
                     float * what, int64_t ld_what, float * EHb, int64_t ld_eh,
                     const float * S, int64_t nb, const float * CB,
                     const float * H, int64_t ld_h, const float * hd,
                     int64_t * idx, int64_t ld_idx, float * D, int64_t ld_d) {
    float delta[16];
    for (int64_t r = 0; r < rows; r++) {
        float * eh = EHb + r * ld_eh;
        for (int j = 0; j < width; j++) {
            const int64_t i = col0 + j;
            const int64_t blk = i / qk;
            const float s = S[r * nb + blk];
            const float * cb = CB + (r * nb + blk) * K;
            const float cur = what[r * ld_what + i];
            const float g = -2.0f * eh[j];
            int best = 0;
            float best_score = 0.0f;
            for (int k = 0; k < K; k++) {
                const float v = s * cb[k];
                delta[k] = v - cur;
                float score = g * delta[k];
                if (proximal) {
                    const float sq = delta[k] * delta[k];
                    const float curv = hd[j] * sq;
                    score = score + curv;
                }
                if (k == 0 || score < best_score) {
                    best_score = score;
                    best = k;
                }
            }
            const float d = delta[best];
            idx[r * ld_idx + i] = best;
            what[r * ld_what + i] = cur + d;
            D[r * ld_d + j] = d;
            const float * h = H + j * ld_h;
            for (int t = j + 1; t < width; t++) {
                const float step = d * h[t];
                eh[t] = eh[t] - step;
            }
        }
    }
}
