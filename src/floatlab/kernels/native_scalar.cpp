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
#include <type_traits>

#include "native_common.h"

namespace {

using namespace floatlab_native;

enum Mode : int { RNE = 0, RNA = 1, RNZ = 2, SR = 3, SR_HALF = 4, SR_BITS = 5 };
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

// d for a >= 2^qmin (1..23 there, checked by the caller; other lanes are discarded)
template <int KIND>
inline int32_t dropped(uint32_t a, uint32_t f, const Spec& s) {
    const int32_t fm = (int32_t)(f > 1u ? f : 1u);
    if (KIND == IEEE) return a < s.sub_bits ? s.qs - fm : s.dn;
    const int32_t e = (int32_t)f - 127, ae = e < 0 ? -e : e;    // HiF8: 3, 2, 1 mantissa bits
    const int32_t d = 20 + (int32_t)(ae > 3) + (int32_t)(ae > 7);
    return e < -15 ? 23 : d;                                      // denormal binades: 2^e apart
}

// One float32 pattern u (element i of a run whose first element has hash index lo0 + hi << 32,
// draws pointing at that first element's draw) rounded: the result's float32 bits.
template <int KIND, int MODE, int RNG>
inline uint32_t round_one(uint32_t u, int64_t i, uint32_t lo0, uint32_t hi,
                          const void* __restrict draws, const Spec& s) {
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
        if constexpr (RNG == HASH) {  // the caller keeps the run's indices in one 2^32 block
            h = hash_bits(lo0 + (uint32_t)i, hi, (uint32_t)(s.seed & 0xFFFFFFFFu), (uint32_t)(s.seed >> 32));
        }
        constexpr int DRAW = MODE == SR ? DRAW_SR : (MODE == SR_BITS ? DRAW_SR_BITS : DRAW_SR_HALF);
        const bool up = random_up<DRAW, RNG>(rem, d, h, draws, i, s.sr_bits);
        r = base + (up ? step : 0u);
    }
    r = r > s.max_bits ? s.ovf_bits : r;
    r = a == 0x7F800000u ? s.inf_bits : r;
    r = a > 0x7F800000u ? 0x7FC00000u : r;
    const uint32_t out = r | sign;
    return (!s.neg_zero && r == 0u) ? 0u : out;
}

template <int KIND, int MODE, int RNG>
__attribute__((noinline))     // one function per case (inlined into the dispatcher, the loops ran
                              // 15-50% slower)
void round_loop(const float* __restrict x, float* __restrict y, int64_t n, int64_t index0,
                const void* __restrict draws, const Spec s) {
    const uint32_t lo0 = (uint32_t)index0, hi = (uint32_t)((uint64_t)index0 >> 32);
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, x + i, 4);
        const uint32_t out = round_one<KIND, MODE, RNG>(u, i, lo0, hi, draws, s);
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

// ---- codes: the rounded value's code in the format, packed as floatlab.plain.packing does ----
// From the rounded bits (floatlab/kernels/codes.py's value_codes on the same values; the caller
// checks this mapping against the plain encoder on every value of the format):
//   * IEEE-style: a magnitude r at or above the smallest normal is (r >> dn) - offset (the
//     exponent field re-biased, the top mantissa bits); below it, a multiple k of 2^qmin whose
//     code is k = sig >> (qs - max(f, 1)) (sig the float32 significand, exact); Inf the
//     format's Inf code; the sign bit from the rounded value's sign (-0 already dropped where
//     the format has none); NaN the format's one NaN code.
//   * HiF8: the dot, exponent sign, exponent magnitude and 3/2/1 mantissa bits of 2^e * 1.m,
//     2^e alone for the denormal binades (e < -15, code e + 23), 0x6F for Inf, 0x80 for NaN.
// The return value of the loops is nonzero where a NaN was produced (a format without NaN
// refuses it: the caller raises, as the plain path).
namespace {

enum Out : int { OUT_U8 = 0, OUT_U16 = 1, OUT_NIB = 2, OUT_B6 = 3 };
enum In : int { IN_F32 = 0, IN_BF16 = 1, IN_F16 = 2 };

struct Codes {
    uint32_t offset;      // IEEE: (127 - bias) << mbits
    uint32_t inf_code;    // IEEE: the magnitude code of Inf
    uint32_t nan_code;    // the (whole) NaN code; 0x10000 where the format has none
};

template <int KIND, int OUT>
inline uint32_t code_of(uint32_t out, const Spec& s, const Codes& c) {
    constexpr uint32_t sign_shift = OUT == OUT_U16 ? 15u : OUT == OUT_U8 ? 7u : OUT == OUT_B6 ? 5u : 3u;
    const uint32_t r = out & 0x7FFFFFFFu, neg = out >> 31, f = r >> 23;
    uint32_t mag;
    if constexpr (KIND == IEEE) {
        const int32_t fm = (int32_t)(f > 1u ? f : 1u), sh = s.qs - fm;
        const uint32_t sig = f ? ((r & 0x7FFFFFu) | 0x800000u) : r;
        const uint32_t sub = sig >> (uint32_t)(sh < 0 ? 0 : (sh > 31 ? 31 : sh));
        const uint32_t normal = (r >> (uint32_t)s.dn) - c.offset;
        mag = r >= s.sub_bits ? normal : sub;
        mag = r == 0x7F800000u ? c.inf_code : mag;
        mag |= neg << sign_shift;
    } else {
        // D = the bit length of |e| = how many exponent bits follow the dot (0001, 001, 01,
        // 10, 11 for D = 0..4): the exponent sign in place of |e|'s leading 1, then
        // min(3, 5 - D) mantissa bits (the rounded value's top ones). Inf is read as 1.5 * 2^15,
        // whose slot it takes; below 2^-15 the code is e + 23 (2^-22 .. 2^-16), 0 for zero.
        const uint32_t rc = r < 0x47400000u ? r : 0x47400000u;
        const int32_t e = (int32_t)(rc >> 23) - 127;
        const uint32_t ae = (uint32_t)(e < 0 ? -e : e);
        const uint32_t D = 31u - (uint32_t)__builtin_clz(2u * ae + 1u);
        const uint32_t m = D < 2u ? 3u : 5u - D;
        const uint32_t h = (1u << D) >> 1, ef = e < 0 ? ae : ae ^ h;
        const uint32_t dot = D < 2u ? (8u << D) : ((D - 1u) << 5);
        const uint32_t mant = (rc & 0x7FFFFFu) >> (23u - m);
        const int32_t low = e + 23 > 0 ? e + 23 : 0;
        const uint32_t code = r < 0x38000000u ? (uint32_t)low : (dot | (ef << m) | mant);
        mag = code | (neg << 7);
    }
    return r > 0x7F800000u ? c.nan_code : mag;
}

// m codes (of BITS bits, no higher bits set except where masked here) into floatlab's little-endian
// bit stream: 4-bit codes two per byte (the even one low), 6-bit ones four per three bytes
template <int BITS>
inline void pack_codes(const uint8_t* __restrict b, uint8_t* __restrict y, int64_t m) {
    if constexpr (BITS == 4) {
        for (int64_t j = 0; j < m / 2; ++j)
            y[j] = (uint8_t)((b[2 * j] & 15u) | (b[2 * j + 1] << 4));
        if (m & 1) y[m / 2] = (uint8_t)(b[m - 1] & 15u);
    } else {
        for (int64_t g = 0; g < m / 4; ++g) {
            const uint32_t v = (b[4 * g] & 63u) | ((b[4 * g + 1] & 63u) << 6) |
                               ((b[4 * g + 2] & 63u) << 12) | ((uint32_t)(b[4 * g + 3] & 63u) << 18);
            y[3 * g] = (uint8_t)v;
            y[3 * g + 1] = (uint8_t)(v >> 8);
            y[3 * g + 2] = (uint8_t)(v >> 16);
        }
        const int64_t r = m % 4, g0 = m / 4;
        if (r) {                      // the last 1-3 codes: ceil(6 r / 8) bytes
            uint32_t v = 0;
            for (int64_t k = 0; k < r; ++k) v |= (uint32_t)(b[4 * g0 + k] & 63u) << (6 * k);
            for (int64_t k = 0; k < (6 * r + 7) / 8; ++k) y[3 * g0 + k] = (uint8_t)(v >> (8 * k));
        }
    }
}

template <int KIND, int MODE, int RNG, int OUT>
uint32_t encode_run(const uint32_t* __restrict u, void* __restrict dst, int64_t n, int64_t index0,
                    const void* __restrict draws, const Spec& s_, const Codes& c_) {
    const Spec s = s_;            // copies: byte stores may alias the referenced ones, which
    const Codes c = c_;           // kept the loop from vectorizing
    const uint32_t lo0 = (uint32_t)index0, hi = (uint32_t)((uint64_t)index0 >> 32);
    uint32_t seen = 0;               // OR of every code: bit 16 marks NaN in a format without
    if constexpr (OUT == OUT_NIB || OUT == OUT_B6) {   // tiles of codes, then packed
        constexpr int64_t T = 512;
        uint8_t buf[T];
        for (int64_t t = 0; t < n; t += T) {
            const int64_t m = n - t < T ? n - t : T;
            for (int64_t i = 0; i < m; ++i) {
                const uint32_t out = round_one<KIND, MODE, RNG>(u[t + i], t + i, lo0, hi, draws, s);
                const uint32_t code = code_of<KIND, OUT>(out, s, c);
                seen |= code;
                buf[i] = (uint8_t)code;
            }
            pack_codes<OUT == OUT_NIB ? 4 : 6>(buf, (uint8_t*)dst + t * (OUT == OUT_NIB ? 4 : 6) / 8, m);
        }
    } else {
        using Code = std::conditional_t<OUT == OUT_U16, uint16_t, uint8_t>;
        Code* __restrict y = (Code*)dst;
        for (int64_t i = 0; i < n; ++i) {
            const uint32_t out = round_one<KIND, MODE, RNG>(u[i], i, lo0, hi, draws, s);
            const uint32_t code = code_of<KIND, OUT>(out, s, c);
            seen |= code;
            y[i] = (Code)code;
        }
    }
    return (seen >> 16) & 1u;
}

using EncodeFn = uint32_t (*)(const uint32_t*, void*, int64_t, int64_t, const void*, const Spec&,
                              const Codes&);

template <int KIND, int OUT>
EncodeFn pick_mode(int mode) {
    switch (mode) {    // the stochastic modes replay the plain path's draws (no hash: encode
                       // without a generator keeps the plain path)
        case RNE: return encode_run<KIND, RNE, NONE, OUT>;
        case RNA: return encode_run<KIND, RNA, NONE, OUT>;
        case RNZ: return encode_run<KIND, RNZ, NONE, OUT>;
        case SR: return encode_run<KIND, SR, REPLAY, OUT>;
        case SR_HALF: return encode_run<KIND, SR_HALF, REPLAY, OUT>;
        default: return encode_run<KIND, SR_BITS, REPLAY, OUT>;
    }
}

template <int KIND>
EncodeFn pick_out(int out, int mode) {
    if (out == OUT_U8 || KIND == HIF8) return pick_mode<KIND, OUT_U8>(mode);   // HiF8: 8 bits
    if (out == OUT_U16) return pick_mode<KIND, OUT_U16>(mode);
    if (out == OUT_B6) return pick_mode<KIND, OUT_B6>(mode);
    return pick_mode<KIND, OUT_NIB>(mode);
}

inline uint32_t f16_bits(uint16_t h) {        // exact widening of an IEEE half to float32
    const uint32_t sgn = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3FFu;
    const float sub_v = (float)m * 5.9604644775390625e-08f;      // m * 2^-24, exact
    uint32_t sub;
    std::memcpy(&sub, &sub_v, 4);
    uint32_t r = ((e + 112u) << 23) | (m << 13);
    r = e == 31u ? (0x7F800000u | (m << 13)) : r;
    r = e == 0u ? sub : r;
    return r | sgn;
}

}  // namespace

// Codes of x[0 .. n) rounded (x float32, bfloat16 or float16 by in_kind), written to dst (uint8
// or uint16 codes; OUT_NIB: two 4-bit codes per byte, x[0] in the low nibble of dst[0]; OUT_B6:
// four 6-bit codes per three bytes, so a slice must start at a multiple of 4); index0 and draws as floatlab_round_f32's (REPLAY or
// NONE only). Returns nonzero when a NaN was produced.
extern "C" int floatlab_encode(const void* x, int in_kind, void* dst, int out_kind, int64_t n,
                               int64_t index0, const void* draws, int kind, int mode,
                               uint32_t max_bits, uint32_t ovf_bits, uint32_t inf_bits,
                               uint32_t tiny_bits, uint32_t half_bits, uint32_t sub_bits, int qs,
                               int dn, int neg_zero, int sr_bits, uint32_t offset,
                               uint32_t inf_code, uint32_t nan_code) {
    const Spec s{max_bits, ovf_bits, inf_bits, tiny_bits, half_bits, sub_bits, qs, dn,
                 neg_zero, sr_bits, 0};
    const Codes c{offset, inf_code, nan_code};
    const EncodeFn fn = kind == IEEE ? pick_out<IEEE>(out_kind, mode) : pick_out<HIF8>(out_kind, mode);
    const int64_t osize = out_kind == OUT_U16 ? 2 : 1;
    if (in_kind == IN_F32) return (int)fn((const uint32_t*)x, dst, n, index0, draws, s, c);
    constexpr int64_t T = 2048;                // widened to float32 a tile at a time
    alignas(64) uint32_t buf[T];
    uint32_t nan = 0;
    const uint16_t* h = (const uint16_t*)x;
    for (int64_t t = 0; t < n; t += T) {
        const int64_t m = n - t < T ? n - t : T;
        if (in_kind == IN_BF16) for (int64_t i = 0; i < m; ++i) buf[i] = (uint32_t)h[t + i] << 16;
        else for (int64_t i = 0; i < m; ++i) buf[i] = f16_bits(h[t + i]);
        char* d = (char*)dst + (out_kind == OUT_NIB ? t / 2 : out_kind == OUT_B6 ? t * 3 / 4 : t * osize);
        nan |= fn(buf, d, m, index0 + t, draws ? (const char*)draws + 8 * t : nullptr, s, c);
    }
    return (int)nan;
}

// ---- decode: values of codes by a table of the plain decoder's values ----
namespace {

template <typename T, int BITS>
void gather(const uint8_t* __restrict c, T* __restrict y, int64_t n, const T* __restrict table) {
    if constexpr (BITS == 4) {
        for (int64_t j = 0; j < n / 2; ++j) {
            const uint8_t b = c[j];
            y[2 * j] = table[b & 15u];
            y[2 * j + 1] = table[b >> 4];
        }
        if (n & 1) y[n - 1] = table[c[n / 2] & 15u];
    } else if constexpr (BITS == 6) {
        const int64_t g0 = n / 4, r = n % 4;
        for (int64_t g = 0; g < g0; ++g) {
            const uint32_t v = c[3 * g] | ((uint32_t)c[3 * g + 1] << 8) | ((uint32_t)c[3 * g + 2] << 16);
            y[4 * g] = table[v & 63u];
            y[4 * g + 1] = table[(v >> 6) & 63u];
            y[4 * g + 2] = table[(v >> 12) & 63u];
            y[4 * g + 3] = table[v >> 18];
        }
        uint32_t v = 0;
        for (int64_t k = 0; k < (6 * r + 7) / 8; ++k) v |= (uint32_t)c[3 * g0 + k] << (8 * k);
        for (int64_t k = 0; k < r; ++k) y[4 * g0 + k] = table[(v >> (6 * k)) & 63u];
    } else {
        for (int64_t i = 0; i < n; ++i) y[i] = table[c[i]];
    }
}

template <typename T>
void gather_by(int bits, const uint8_t* c, void* y, int64_t n, const void* table) {
    if (bits == 4) gather<T, 4>(c, (T*)y, n, (const T*)table);
    else if (bits == 6) gather<T, 6>(c, (T*)y, n, (const T*)table);
    else gather<T, 8>(c, (T*)y, n, (const T*)table);
}

}  // namespace

// y[i] = table[code i] for i in [0, n): codes of 8 bits one per byte, of 4 or 6 bits packed as
// floatlab.plain.packing does (element 0 in the low bits of c[0]); table entries of esize bytes
// (2, 4 or 8: the output dtype's bits).
extern "C" void floatlab_decode_table(const uint8_t* c, void* y, int64_t n, const void* table,
                                      int esize, int bits) {
    if (esize == 2) gather_by<uint16_t>(bits, c, y, n, table);
    else if (esize == 4) gather_by<uint32_t>(bits, c, y, n, table);
    else gather_by<uint64_t>(bits, c, y, n, table);
}

// float32 values of IEEE half (fp16 != 0) or bfloat16 codes; every NaN as 0x7FC00000 (what the
// fast path's torch.where(v != v, nan, v.float()) gives).
extern "C" void floatlab_decode_half(const uint16_t* c, uint32_t* y, int64_t n, int fp16) {
    if (fp16) {
        for (int64_t i = 0; i < n; ++i) {
            const uint32_t r = f16_bits(c[i]);
            y[i] = (r & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : r;
        }
    } else {
        for (int64_t i = 0; i < n; ++i) {
            const uint32_t r = (uint32_t)c[i] << 16;
            y[i] = (r & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : r;
        }
    }
}

// ---- block decode: values of block codes by a table of (scale, element) values ----
namespace {

template <typename T, int BITS>
void gather_rows(const uint8_t* __restrict c, T* __restrict y, int64_t rows, int64_t len,
                 const int32_t* __restrict base, const T* __restrict table) {
    for (int64_t r = 0; r < rows; ++r) {
        const T* __restrict t = table + base[r];
        T* __restrict yr = y + r * len;
        if constexpr (BITS == 4) {
            const uint8_t* cr = c + r * len / 2;
            for (int64_t j = 0; j < len / 2; ++j) {
                const uint8_t b = cr[j];
                yr[2 * j] = t[b & 15u];
                yr[2 * j + 1] = t[b >> 4];
            }
        } else {
            const uint8_t* cr = c + r * len;
            for (int64_t j = 0; j < len; ++j) yr[j] = t[cr[j]];
        }
    }
}

template <typename T>
void gather_rows_by(int bits, const uint8_t* c, void* y, int64_t rows, int64_t len,
                    const int32_t* base, const void* table) {
    if (bits == 4) gather_rows<T, 4>(c, (T*)y, rows, len, base, (const T*)table);
    else gather_rows<T, 8>(c, (T*)y, rows, len, base, (const T*)table);
}

}  // namespace

// Rows of len elements (len even for 4-bit codes, packed two per byte, the even element low),
// each sharing one table offset: y[r * len + j] = table[base[r] + code(r * len + j)]. The
// table holds the plain decoder's value of every (scale, element) pair, esize bytes each.
extern "C" void floatlab_decode_rows(const uint8_t* c, void* y, int64_t rows, int64_t len,
                                     const int32_t* base, const void* table, int esize, int bits) {
    if (esize == 2) gather_rows_by<uint16_t>(bits, c, y, rows, len, base, table);
    else if (esize == 4) gather_rows_by<uint32_t>(bits, c, y, rows, len, base, table);
    else gather_rows_by<uint64_t>(bits, c, y, rows, len, base, table);
}
