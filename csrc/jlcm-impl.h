// Helpers shared by the kernel files (not part of the API).
#pragma once

#include "jlcm.h"

#include <string.h>

#if defined(__F16C__) || defined(__BMI2__)
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

// For kernels written once over a few constant parameters: each caller must get its own inlined
// copy, in which the parameters are constants (gcc otherwise calls one copy with them as variables:
// 20% slower for the x86 gemv).
#if defined(_MSC_VER)
#define JLCM_INLINE __forceinline
#elif defined(__GNUC__)
#define JLCM_INLINE inline __attribute__((always_inline))
#else
#define JLCM_INLINE inline
#endif

// Codebooks as int8 entries in a scalar register. The vector code then only broadcasts the
// word: spreading nibbles to bytes takes a few integer ops, which run beside the vector pipes
// that every other step of a dot product keeps busy. A table repeats every 4 (JLCM2) or 8
// (JLCM3) bytes, so an index byte's bits above its 2 (3) index bits may hold anything below 16.

static inline uint64_t jlcm_load16(const uint8_t * p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

// Codebook bytes spread out: byte j at bits 16j..16j+7 (j < 4).
static inline uint64_t jlcm2_bytes(const uint8_t * cb) {
    const uint64_t x = jlcm_load16(cb);
    return (x | x << 8) & 0x00ff00ffull;
}

// Two JLCM2 codebooks: a's bytes as above, b's 32 bits higher.
static inline uint64_t jlcm2_bytes_pair(const uint8_t * a, const uint8_t * b) {
    const uint64_t x = jlcm_load16(a) | jlcm_load16(b) << 32;
    return (x | x << 8) & 0x00ff00ff00ff00ffull;
}

static inline uint64_t jlcm3_bytes(const uint8_t * cb) {
    uint32_t raw;
    memcpy(&raw, cb, 4);
    uint64_t x = raw;
    x = (x | x << 16) & 0x0000ffff0000ffffull;      // codebook bytes 0-1 -> bits 0..15, bytes 2-3 -> 32..47
    return (x | x << 8) & 0x00ff00ff00ff00ffull;    // byte j -> bits 16j..16j+7
}

// Spread bytes -> a table: nibble k of the codebook holds entry k + 8 and goes to byte k.
// The nibbles are kept so (unsigned, for maddubs: sum (u - 8) a = sum u a - 8 sum a);
// jlcm_entries takes 8 off every byte with no carries, (n + 0x78) ^ 0x80 = n - 8.
static inline uint64_t jlcm_nibbles(uint64_t x) {
    return (x | x << 4) & 0x0f0f0f0f0f0f0f0full;
}

static inline uint64_t jlcm_entries(uint64_t nibbles) {
    return (nibbles + 0x7878787878787878ull) ^ 0x8080808080808080ull;
}

// A codebook's nibbles, one per byte: JLCM2's in bytes 0-3, a pair's second in 4-7, JLCM3's in 0-7.
// With BMI2 one pdep spreads them, as ggml's IQ1 kernels spread their indices (fast from Intel
// Haswell and AMD Zen 3 on; microcoded on Zen 1/2). On the x86 JLCM3 dot product, which issues
// about 50 instructions a block, the shifts and masks it replaces cost 8% (AMD host, 2026-12-07).
#if defined(__BMI2__)
static inline uint64_t jlcm2_nibbles(const uint8_t * cb) { return _pdep_u64(jlcm_load16(cb), 0x0f0f0f0full); }
static inline uint64_t jlcm2_nibbles_pair(const uint8_t * a, const uint8_t * b) {
    return _pdep_u64(jlcm_load16(a) | jlcm_load16(b) << 16, 0x0f0f0f0f0f0f0f0full);
}
static inline uint64_t jlcm3_nibbles(const uint8_t * cb) {
    uint32_t raw;
    memcpy(&raw, cb, 4);
    return _pdep_u64(raw, 0x0f0f0f0f0f0f0f0full);
}
#else
static inline uint64_t jlcm2_nibbles(const uint8_t * cb) { return jlcm_nibbles(jlcm2_bytes(cb)); }
static inline uint64_t jlcm2_nibbles_pair(const uint8_t * a, const uint8_t * b) { return jlcm_nibbles(jlcm2_bytes_pair(a, b)); }
static inline uint64_t jlcm3_nibbles(const uint8_t * cb) { return jlcm_nibbles(jlcm3_bytes(cb)); }
#endif

// int8 tables: a JLCM2 codebook's entry k in byte k; a pair's second in bytes 4-7; JLCM3's in 0-7.
static inline uint32_t jlcm2_table_word(const uint8_t * cb) { return (uint32_t)jlcm_entries(jlcm2_nibbles(cb)); }
static inline uint64_t jlcm2_table_pair(const uint8_t * a, const uint8_t * b) { return jlcm_entries(jlcm2_nibbles_pair(a, b)); }
static inline uint64_t jlcm3_table_word(const uint8_t * cb) { return jlcm_entries(jlcm3_nibbles(cb)); }
