// Scalar rounding of float32 values into a float format, on the integer bits alone (see
// floatlab/kernels/native_scalar.py, which derives the constants, checks them against the
// format's own spacing, compiles and calls this file).
//
// For a float32 magnitude a (bits, sign removed) with exponent field f, d is how many low bits
// of the significand the format drops there (qe - unit: the format's spacing exponent less the
// exponent of one significand unit). Two regions:
//   * a >= 2^qmin (qmin: the format's spacing at the bottom of its range), where 1 <= d <= 23:
//     the dropped bits are bits of a itself, so rounding is integer arithmetic on a: keep
//     a & ~mask, add 2^d to round up; a carry out of the mantissa lands in the exponent field,
//     which is the next binade's value, exactly. d comes from a formula per format kind (IEEE:
//     one d above the smallest normal, a slope below; HiF8: its tapered mantissa widths).
//   * a < 2^qmin ("tiny"): the result is 0 or 2^qmin, decided on rem = the whole significand,
//     d = qmin - unit.
// No table lookups (gathers are slow on these CPUs) and no branches, so each loop vectorizes.
// The rounding decisions are those of floatlab/kernels/scalar.py's _round_up (ties to even,
// away, toward zero; stochastic against the in-kernel hash of floatlab/kernels/rng.py or the
// plain path's own draws), and overflow, Inf, NaN and the sign follow its _finish. Everything
// is integer work except the replayed float64 draws' comparison u < rem * 2^-d (exact).
#include <cstdint>
#include <cstring>

namespace {

enum Mode : int { RNE = 0, RNA = 1, RNZ = 2, SR = 3, SR_HALF = 4, SR_BITS = 5 };
enum Rng : int { NONE = 0, HASH = 1, REPLAY = 2 };
enum Kind : int { IEEE = 0, HIF8 = 1 };

struct Spec {
    uint32_t max_bits;    // the format's largest magnitude (float32 bits)
    uint32_t ovf_bits;    // what a finite value above it becomes (Inf, NaN or the max)
    uint32_t inf_bits;    // what +-Inf becomes (magnitude)
    uint32_t tiny_bits;   // 2^qmin (0: no tiny region)
    uint32_t half_bits;   // 2^(qmin - 1): the tiny region's midpoint
    uint32_t sub_bits;    // IEEE: the smallest normal, below which d = qs - max(f, 1)
    int32_t qs;           // qmin + 150
    int32_t dn;           // IEEE: d above the smallest normal
    int32_t neg_zero;     // keep -0 (else every zero result is +0)
    int32_t sr_bits;      // SR_BITS: random bits k (1..32)
    uint64_t seed;        // HASH: the 0-d seed tensor's value
};

inline uint32_t mix32(uint32_t h) {          // lowbias32, as floatlab/kernels/rng.py's mix32
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

// d for a >= 2^qmin (1..23 there, checked by the caller; other lanes are discarded)
template <int KIND>
inline int32_t dropped(uint32_t a, uint32_t f, const Spec& s) {
    const int32_t fm = (int32_t)(f > 1u ? f : 1u);
    if (KIND == IEEE) return a < s.sub_bits ? s.qs - fm : s.dn;
    const int32_t e = (int32_t)f - 127, ae = e < 0 ? -e : e;    // HiF8: 3, 2, 1 mantissa bits
    const int32_t d = 20 + (int32_t)(ae > 3) + (int32_t)(ae > 7);
    return e < -15 ? 23 : d;                                      // denormal binades: 2^e apart
}

template <int KIND, int MODE, int RNG>
void round_loop(const float* __restrict x, float* __restrict y, int64_t n, int64_t index0,
                const void* __restrict draws, const Spec s) {
    const uint32_t s0 = (uint32_t)(s.seed & 0xFFFFFFFFu), s1 = (uint32_t)(s.seed >> 32);
    const uint32_t hi = (uint32_t)((uint64_t)index0 >> 32);
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, x + i, 4);
        const uint32_t sign = u & 0x80000000u, a = u & 0x7FFFFFFFu, f = a >> 23;
        const bool tiny = a < s.tiny_bits;
        const int32_t dn = dropped<KIND>(a, f, s);
        const uint32_t dd = (uint32_t)(dn < 23 ? (dn > 0 ? dn : 0) : 23);
        const uint32_t mask = (1u << dd) - 1u, hm = mask >> 1;
        uint32_t r;
        if constexpr (MODE == RNE || MODE == RNA || MODE == RNZ) {
            uint32_t add = hm;                                    // RNZ: up only above the half
            if constexpr (MODE == RNA) add = hm + 1u;                       // at or above the half
            if constexpr (MODE == RNE) add = hm + (((a | 0x800000u) >> dd) & 1u);   // + fl's parity
            const uint32_t rn = (a + add) & ~mask;
            const bool tiny_up = MODE == RNA ? a >= s.half_bits : a > s.half_bits;
            r = tiny ? (tiny_up ? s.tiny_bits : 0u) : rn;
        } else {
            const int32_t fm = (int32_t)(f > 1u ? f : 1u);
            const int32_t d = tiny ? s.qs - fm : dn;              // exact, as the plain path's
            const uint32_t sig = f ? ((a & 0x7FFFFFu) | 0x800000u) : a;
            const uint32_t rem = tiny ? sig : (a & mask);
            const uint32_t base = tiny ? 0u : (a & ~mask);
            const uint32_t step = tiny ? s.tiny_bits : (1u << dd);
            uint32_t h = 0;
            if constexpr (RNG == HASH)    // the caller keeps index0 .. index0 + n - 1 in one 2^32 run
                h = mix32(mix32(((uint32_t)index0 + (uint32_t)i) ^ s0) ^ hi ^ s1);
            bool up;
            if constexpr (MODE == SR_HALF) {
                const bool bit = RNG == HASH ? (h >> 31) != 0u
                                             : ((const int64_t*)draws)[i] == 1;
                up = rem != 0u && bit;
            } else if constexpr (MODE == SR) {
                if constexpr (RNG == HASH) {   // P(up) = rem / 2^d: the top d bits of h below rem,
                    // i.e. h < rem * 2^(32 - d) (< 2^32, as rem < 2^d), or for d > 32
                    // h < floor(rem / 2^(d - 32)); d <= 0 leaves rem = 0: never
                    const int32_t l = 32 - d, r_ = d - 32;
                    const uint32_t sl = (uint32_t)(l < 0 ? 0 : (l > 31 ? 31 : l));
                    const uint32_t sr = (uint32_t)(r_ < 0 ? 0 : (r_ > 31 ? 31 : r_));
                    up = h < ((rem << sl) >> sr);
                } else {                  // the plain path's u < frac, frac = rem * 2^-d exactly
                    const double u01 = ((const double*)draws)[i];
                    const uint64_t pb = (uint64_t)(1023 - (d > 0 ? d : 0)) << 52;
                    double p;
                    std::memcpy(&p, &pb, 8);
                    up = u01 < (double)rem * p;
                }
            } else {                      // SR_BITS: floor(rem * 2^(k-d)) + r >= 2^k
                const int32_t k = s.sr_bits, sh = d - k;
                const uint64_t r64 = (uint64_t)rem;
                const uint64_t part = sh >= 0 ? (r64 >> (sh < 63 ? sh : 63))
                                              : (r64 << (-sh < 63 ? -sh : 63));
                const uint64_t rk = RNG == HASH ? (uint64_t)(h >> (32 - k))
                                                : (uint64_t)((const int64_t*)draws)[i];
                up = part + rk >= (1ull << k);
            }
            r = base + (up ? step : 0u);
        }
        r = r > s.max_bits ? s.ovf_bits : r;
        r = a == 0x7F800000u ? s.inf_bits : r;
        r = a > 0x7F800000u ? 0x7FC00000u : r;
        uint32_t out = r | sign;
        out = (!s.neg_zero && r == 0u) ? 0u : out;
        std::memcpy(y + i, &out, 4);
    }
}

template <int KIND, int MODE>
void by_rng(int rng, const float* x, float* y, int64_t n, int64_t index0, const void* draws,
            const Spec& s) {
    if (rng == HASH) round_loop<KIND, MODE, HASH>(x, y, n, index0, draws, s);
    else round_loop<KIND, MODE, REPLAY>(x, y, n, index0, draws, s);
}

template <int KIND>
void by_mode(int mode, int rng, const float* x, float* y, int64_t n, int64_t index0,
             const void* draws, const Spec& s) {
    switch (mode) {
        case RNE: round_loop<KIND, RNE, NONE>(x, y, n, index0, draws, s); break;
        case RNA: round_loop<KIND, RNA, NONE>(x, y, n, index0, draws, s); break;
        case RNZ: round_loop<KIND, RNZ, NONE>(x, y, n, index0, draws, s); break;
        case SR: by_rng<KIND, SR>(rng, x, y, n, index0, draws, s); break;
        case SR_HALF: by_rng<KIND, SR_HALF>(rng, x, y, n, index0, draws, s); break;
        default: by_rng<KIND, SR_BITS>(rng, x, y, n, index0, draws, s); break;
    }
}

}  // namespace

// y[i] = x[i] rounded, for i in [0, n); index0 is x[0]'s index in the whole tensor (the hash's
// counter); draws points at the plain path's draws for x[0] (REPLAY: float64 for SR, int64 for
// SR_HALF and SR_BITS), or is null.
extern "C" void floatlab_round_f32(const float* x, float* y, int64_t n, int64_t index0,
                                   const void* draws, int kind, int mode, int rng,
                                   uint32_t max_bits, uint32_t ovf_bits, uint32_t inf_bits,
                                   uint32_t tiny_bits, uint32_t half_bits, uint32_t sub_bits,
                                   int qs, int dn, int neg_zero, int sr_bits, uint64_t seed) {
    const Spec s{max_bits, ovf_bits, inf_bits, tiny_bits, half_bits, sub_bits, qs, dn,
                 neg_zero, sr_bits, seed};
    const int64_t step = 8;       // bytes per draw (float64 or int64)
    while (n > 0) {               // runs within one 2^32 block of indices (the hash's hi word)
        const int64_t room = (int64_t)(0x100000000ull - ((uint64_t)index0 & 0xFFFFFFFFull));
        const int64_t m = n < room ? n : room;
        if (kind == IEEE) by_mode<IEEE>(mode, rng, x, y, m, index0, draws, s);
        else by_mode<HIF8>(mode, rng, x, y, m, index0, draws, s);
        x += m; y += m; n -= m; index0 += m;
        if (draws) draws = (const char*)draws + step * m;
    }
}
