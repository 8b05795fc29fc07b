// Helpers shared by the kernel files (not part of the API).
#pragma once

#include "jlcm.h"

#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

// binary16 -> binary32 is exact, so every path below gives the same float.
static inline float jlcm_half_to_float(jlcm_half h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#elif defined(__ARM_NEON) && defined(__aarch64__)
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp  = (h >> 10) & 0x1f;
    const uint32_t man  = h & 0x3ff;
    uint32_t u;
    float f;
    if (exp == 0x1f) {                       // inf, nan
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {                   // zero, subnormal: man * 2^-24, exact in binary32
        f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    memcpy(&f, &u, 4);
    return f;
#endif
}
