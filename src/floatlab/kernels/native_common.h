// Helpers shared by floatlab's native kernels (native_scalar.cpp, native_block.cpp,
// native_hif4.cpp): float32 bits, the in-kernel hash of floatlab/kernels/rng.py, the stochastic
// rounding decisions of floatlab/kernels/scalar.py's _round_up, and HiFloat4's scale formulas.
// Everything is inline; floatlab/kernels/native.py hashes this file into each library's cache key.
#pragma once
#include <cstdint>
#include <cstring>

namespace floatlab_native {

enum Rng : int { NONE = 0, HASH = 1, REPLAY = 2 };   // no draws; hash (seed, index); the plain path's
enum Draw : int { DRAW_SR = 0, DRAW_SR_BITS = 1, DRAW_SR_HALF = 2 };

constexpr uint32_t SIGN = 0x80000000u;

inline uint32_t bits_of(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }
inline float float_of(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }

inline uint32_t mix32(uint32_t h) {          // lowbias32, as floatlab/kernels/rng.py's mix32
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

// the hash's 32 random bits for the element whose index in the tensor has the words lo, hi
// (seed words s0, s1), as floatlab/kernels/rng.py
inline uint32_t hash_bits(uint32_t lo, uint32_t hi, uint32_t s0, uint32_t s1) {
    return mix32(mix32(lo ^ s0) ^ hi ^ s1);
}

// Whether a stochastic mode rounds up a magnitude whose dropped bits are rem (d of them, so
// rem < 2^d): h the hash's bits (HASH), or draw i of the plain path's draws (REPLAY: float64 for
// SR, int64 for SR_BITS and SR_HALF); k the random bits of SR_BITS.
template <int DRAW, int RNG>
inline bool random_up(uint32_t rem, int32_t d, uint32_t h, const void* draws, int64_t i, int32_t k) {
    if constexpr (DRAW == DRAW_SR_HALF) {
        const bool bit = RNG == HASH ? (h >> 31) != 0u : ((const int64_t*)draws)[i] == 1;
        return (rem != 0u) & bit;
    } else if constexpr (DRAW == DRAW_SR) {
        if constexpr (RNG == HASH) {   // P(up) = rem / 2^d: the top d bits of h below rem, i.e.
            // h < rem * 2^(32 - d) (< 2^32, as rem < 2^d), or for d > 32 h < floor(rem / 2^(d - 32));
            // d <= 0 leaves rem = 0: never
            const int32_t l = 32 - d, r_ = d - 32;
            const uint32_t sl = (uint32_t)(l < 0 ? 0 : (l > 31 ? 31 : l));
            const uint32_t sr = (uint32_t)(r_ < 0 ? 0 : (r_ > 31 ? 31 : r_));
            return h < ((rem << sl) >> sr);
        } else {                       // the plain path's u < rem * 2^-d (exact)
            const int32_t dc = d < 0 ? 0 : (d > 1022 ? 1022 : d);
            const uint64_t pb = (uint64_t)(1023 - dc) << 52;
            double p;
            std::memcpy(&p, &pb, 8);
            return ((const double*)draws)[i] < (double)rem * p;
        }
    } else {                           // SR_BITS: floor(rem * 2^(k - d)) + r >= 2^k
        const int32_t sh = d - k;
        const uint64_t r64 = rem;
        const uint64_t part = sh >= 0 ? (r64 >> (sh < 63 ? sh : 63)) : (r64 << (-sh < 63 ? -sh : 63));
        const uint64_t rk = RNG == HASH ? (uint64_t)(h >> (32 - k)) : (uint64_t)((const int64_t*)draws)[i];
        return part + rk >= (1ull << k);
    }
}

// ---- HiFloat4's scales (FORMATS.md section 2.2, floatlab/plain/hif4.py) ----------------------
// On float32 scalars or vectors (GCC/clang vector extensions): U is the matching uint32 type.
// Every product is a float32 product, as in the reference (compiled with -ffp-contract=off).

template <class U, class F> inline U as_bits(F f) {
    if constexpr (sizeof(F) == 4) return bits_of(f);
    else return (U)f;
}
template <class F, class U> inline F as_float(U b) {
    if constexpr (sizeof(U) == 4) return float_of(b);
    else return (F)b;
}

// finite float32 bits rounded to bfloat16 (RNE), kept as float32 bits
template <class U> inline U bf16_round(U b) {
    const U m = b & ~SIGN;
    return ((m + 0x7FFFu + ((m >> 16) & 1u)) & 0xFFFF0000u) | (b & SIGN);
}

// level 1 from the block's largest finite magnitude Ma: S1 = E6M2(RNE)(clamp(bf16(Ma * bf16(1/7)),
// 2^-48, 1.5 * 2^15)) and r = bf16(1 / S1); sf is normal there, so E6M2's RNE is RNE to 2
// mantissa bits
template <class U, class F> inline void hif4_level1(F ma, F& s1, F& r) {
    const F lo = F{} + 0x1p-48f, hi = F{} + 49152.0f;
    F sf = as_float<F>(bf16_round(as_bits<U>(ma * 0.142578125f)));
    sf = sf < lo ? lo : (sf > hi ? hi : sf);
    U sb = as_bits<U>(sf);
    sb = (sb + 0xFFFFFu + ((sb >> 21) & 1u)) & ~0x1FFFFFu;
    s1 = as_float<F>(sb);
    r = as_float<F>(bf16_round(as_bits<U>(1.0f / s1)));
}

// levels 2 and 3 from a subgroup's maximum Mc and its group of 8's Mb (float32 vectors, lane by
// lane): E1_8 = [Mb * r >= 4], E1_16 = [(Mc * r) * 2^-E1_8 >= 2], as all-ones or 0 masks
template <class U, class F> inline void hif4_levels23(F mb, F mc, float r, U& e8, U& e16) {
    e8 = (U)((mb * r) >= 4.0f);
    const F scale = (F)((U{} + 0x3F800000u) - (e8 & (1u << 23)));     // 2^-E1_8
    e16 = (U)(((mc * r) * scale) >= 2.0f);
}

}  // namespace floatlab_native
