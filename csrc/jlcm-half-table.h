// binary16 -> binary32 by table, for the SIMD kernel file of the target to include inside its
// architecture guard (one table per library, 256 KiB). The kernels' loops are bound by their
// vector pipes: a load from the table spends none of them, where converting a scalar spends
// one to three (x86: insert, vcvtph2ps, broadcast). The table is filled once, at load time,
// by the exact converter, so every path sees the same floats. Compilers without load-time
// constructors convert instead.
#pragma once

#include "jlcm-impl.h"

#if defined(__GNUC__)
#define JLCM_HALF_TABLE
static float jlcm_half_table[1 << 16];

__attribute__((constructor)) static void jlcm_fill_half_table(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) jlcm_half_table[h] = jlcm_half_to_float((jlcm_half)h);
}

static inline float jlcm_half_lookup(jlcm_half h) { return jlcm_half_table[h]; }
#else
static inline float jlcm_half_lookup(jlcm_half h) { return jlcm_half_to_float(h); }
#endif
