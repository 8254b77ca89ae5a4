// Block formats in one pass over float32 blocks (see floatlab/kernels/native_block.py, which
// derives the constants, checks them against the formats, compiles and calls this file).
//
// Each function takes contiguous (nb, B) float32 blocks x (B: MX 32, AMAX 16 or 256, HiF4 64) and
// writes the fake-quantized blocks to y (y may be x itself: every block is copied to a local
// buffer before its outputs are written). The results are those of floatlab/kernels/block.py's
// mx_kernel, amax_kernel and hif4_kernel, step by step in the same float32 operations (no FMA
// contraction: compiled with -ffp-contract=off):
//   * MX (FLOOR): e = clamp(floor(log2 amax) - emax_elem, lo, hi); t = x * 2^-e (exact unless
//     |t| < 2^-126, where t stands for a value far below half the element's smallest step and
//     is replaced by +-2^-126, which every mode rounds the same way); y = round(t) * 2^e.
//   * AMAX (NVFP4): s_b = scale_RNE((amax / elem_max) * s_enc), s_enc_b = min(1 / (s_b * s_dec),
//     FLT_MAX); y = (round(x * s_enc_b) * s_b) * s_dec (s_enc, s_dec: the caller's tensor scale).
//   * HIF4: the scale formulas of native_common.h (16 blocks' level 1 at once), then v = bf16((|x| * r) * 2^-shift), y =
//     (+-round(v) * S1) * 2^shift.
// A block holding NaN or Inf becomes NaN. The element grid has spacing 2^qe, qe = max(E, emin)
// - mbits (E = floor(log2 |t|), checked by the caller against the format's own
// quantum_exponent), saturating at the element's max. The nearest modes run on explicit 16-lane
// vectors (round_near; rne and HiF4's uniform grid in the float unit, exactly); the others make
// floatlab/kernels/scalar.py's _round_up decisions on the integer bits (round_mag).
// Stochastic modes take the plain path's draws (REPLAY: float64 for SR, int64 for SR_BITS and
// SR_HALF, one per element of the blocks) or hash (seed, block-layout index) as
// floatlab/kernels/rng.py (HASH), the compiled kernel's very bits.
#include <cstdint>
#include <cstring>

#include "native_common.h"

namespace {

using namespace floatlab_native;

enum Mode : int { RNE = 0, RNA = 1, RNZ = 2, RTZ = 3, RUP = 4, RDN = 5, RTO = 6, SR = 7,
                  SR_BITS = 8, SR_HALF = 9 };
constexpr uint32_t F32_INF = 0x7F800000u, F32_NAN = 0x7FC00000u;
constexpr float F32_MAX = 3.40282346638528859811704183484516925e+38f;

struct Grid {             // a signed or unsigned minifloat-like grid (the caller checks it)
    int32_t emin;         // spacing 2^(max(E, emin) - mbits) in the binade 2^E
    int32_t mbits;
    uint32_t max_bits;    // the largest magnitude (float32 bits): results saturate there
    int32_t neg_zero;     // keep -0 (else zero results are +0)
    uint32_t tiny_bits;   // 2^qmin, qmin = emin - mbits: the smallest step
    uint32_t half_bits;   // 2^(qmin - 1)
};

struct Random {
    const void* draws;    // REPLAY: the slice's first draw
    int64_t index0;       // HASH: the slice's first element's index in the blocks
    uint32_t s0, s1;      // HASH: the seed's words
    int32_t sr_bits;      // SR_BITS: k
};

// float32 bits of 2^q for q in [-149, 127]
inline uint32_t pow2_bits(int32_t q) {
    const int32_t n = q + 127, s = q + 149;
    const uint32_t normal = (uint32_t)(n > 0 ? n : 0) << 23;
    const uint32_t sub = 1u << (s < 0 ? 0 : (s > 31 ? 31 : s));
    return q >= -126 ? normal : sub;
}

inline Grid grid(int emin, int mbits, uint32_t max_bits, int neg_zero) {
    return Grid{emin, mbits, max_bits, neg_zero, pow2_bits(emin - mbits), pow2_bits(emin - mbits - 1)};
}

// The magnitude bits of |t| (a, finite or not: non-finite blocks are discarded) rounded onto
// the grid and saturated; `neg` is t's sign (directed modes), `i` the element's offset in the
// slice (draws and hash index).
template <int MODE, int RNG>
inline uint32_t round_mag(uint32_t a, bool neg, int64_t i, const Grid& g, const Random& rnd) {
    if constexpr (MODE == RNE || MODE == RNA || MODE == RNZ) {
        // as native_scalar.cpp: at or above 2^qmin (a normal float32, qmin >= -126) d is
        // 23 - mbits, more in the element's subnormal binades, at most 23; below, 0 or 2^qmin
        const int32_t f = (int32_t)(a >> 23), below = g.emin + 127 - f;
        const uint32_t d = (uint32_t)(23 - g.mbits + (below > 0 ? below : 0));
        const uint32_t dd = d < 23u ? d : 23u;
        const uint32_t mask = (1u << dd) - 1u, hm = mask >> 1;
        uint32_t add = hm;                                          // RNZ: up above the half
        if constexpr (MODE == RNA) add = hm + 1u;                   // up from the half
        if constexpr (MODE == RNE) add = hm + (((a | 0x800000u) >> dd) & 1u);   // + fl's parity
        const uint32_t rn = (a + add) & ~mask;
        const bool tiny_up = MODE == RNA ? a >= g.half_bits : a > g.half_bits;
        const uint32_t r = a < g.tiny_bits ? (tiny_up ? g.tiny_bits : 0u) : rn;
        return r > g.max_bits ? g.max_bits : r;
    }
    const int32_t f = (int32_t)(a >> 23), ex = f - 127;
    const int32_t qe = (ex > g.emin ? ex : g.emin) - g.mbits;
    const int32_t d = qe - ((f > 1 ? f : 1) - 150);           // dropped significand bits
    const uint32_t sig = f ? ((a & 0x7FFFFFu) | 0x800000u) : a;
    const uint32_t dd = (uint32_t)(d < 0 ? 0 : (d > 25 ? 25 : d));
    const uint32_t mask = (1u << dd) - 1u;
    const uint32_t fl = sig >> dd, rem = sig & mask;
    bool up;
    // bitwise & and | (no short-circuit jumps: the loops stay vectorizable)
    if constexpr (MODE == RTZ) up = false;
    else if constexpr (MODE == RUP) up = (rem != 0u) & !neg;
    else if constexpr (MODE == RDN) up = (rem != 0u) & neg;
    else if constexpr (MODE == RTO) up = ((rem != 0u ? 1u : 0u) & ~fl & 1u) != 0u;
    else {
        uint32_t h = 0;
        if constexpr (RNG == HASH) {
            const uint64_t idx = (uint64_t)(rnd.index0 + i);
            h = hash_bits((uint32_t)idx, (uint32_t)(idx >> 32), rnd.s0, rnd.s1);
        }
        constexpr int DRAW = MODE == SR ? DRAW_SR : (MODE == SR_BITS ? DRAW_SR_BITS : DRAW_SR_HALF);
        up = random_up<DRAW, RNG>(rem, d, h, rnd.draws, i, rnd.sr_bits);
    }
    const uint32_t u = up ? 1u : 0u;
    // d in 1..23: the kept bits are a's own (a carry runs into the exponent field, exactly);
    // d >= 24: |t| < 2^qe, the result is 0 or 2^qe; d <= 0: t is on the grid
    const uint32_t kept = (a & ~mask) + (u << dd);
    const uint32_t tiny = u ? pow2_bits(qe) : 0u;
    uint32_t r = d <= 0 ? a : (d <= 23 ? kept : tiny);
    return r > g.max_bits ? g.max_bits : r;
}

typedef uint32_t v16u __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

#define SWAP1(a) __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)
#define SWAP2(a) __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)
#define SWAP4(a) __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)
#define SWAP8(a) __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)

inline v16u vmax(v16u a, v16u b) { return a > b ? a : b; }

typedef float v16f __attribute__((vector_size(64)));

inline v16u splat(uint32_t v) { return (v16u){} + v; }
inline v16f splatf(float v) { return (v16f){} + v; }

// round_mag's nearest modes on 16 lanes (the same operations; explicit vectors, because the
// compiler's loop vectorizer leaves per-block overheads that cost as much as the rounding)
template <int MODE>
inline v16u round_near(v16u a, const Grid& g) {
    if constexpr (MODE == RNE) {
        // the float unit's own RNE: with C = 1.5 * 2^(q + 23) (q = max(E, emin) - mbits, the
        // spacing of |t|'s binade, or qmin below the grid), |t| + C lands in C's binade, whose
        // spacing is 2^q, so it rounds |t| to the grid (ties to even); - C is exact. |t| is
        // clamped to the max first (on the grid; everything above saturates to it), so C
        // stays finite. Same results as the integer path below.
        const v16u m = a > g.max_bits ? splat(g.max_bits) : a;
        const v16i f = (v16i)(m >> 23);
        const v16i k = f > g.emin + 127 ? f : (v16i){} + (g.emin + 127);
        const v16f c = (v16f)(((v16u)(k + (23 - g.mbits)) << 23) | 0x400000u);
        return (v16u)(((v16f)m + c) - c);
    }
    const v16i f = (v16i)(a >> 23);
    v16i below = (g.emin + 127) - f;
    below = below > 0 ? below : (v16i){};
    v16i d = (23 - g.mbits) + below;
    const v16u dd = (v16u)(d < 23 ? d : (v16i){} + 23);
    const v16u mask = (splat(1u) << dd) - 1u, hm = mask >> 1;
    v16u add = hm;                                                  // RNZ
    if constexpr (MODE == RNA) add = hm + 1u;
    if constexpr (MODE == RNE) add = hm + (((a | 0x800000u) >> dd) & 1u);
    const v16u rn = (a + add) & ~mask;
    const v16i tiny_up = MODE == RNA ? (v16i)(a >= g.half_bits) : (v16i)(a > g.half_bits);
    const v16u tiny = (v16u)tiny_up & g.tiny_bits;
    const v16u r = a < g.tiny_bits ? tiny : rn;
    return r > g.max_bits ? splat(g.max_bits) : r;
}

// the sign put back (-0 kept only where the format has it)
inline v16u with_sign(v16u r, v16u sign, const Grid& g) {
    const v16u keep = g.neg_zero ? splat(~0u) : (v16u)(r != 0u);
    return r | (sign & keep);
}

constexpr bool nearest(int mode) { return mode == RNE || mode == RNA || mode == RNZ; }

// ---- 16 blocks at a time ---------------------------------------------------------------------
// A group's per-block work (maximum, scale) runs on vectors across its 16 blocks: lane k is
// block k. max16 reduces 16 vectors to the vector of their 16 maxima in 4 levels of pairwise
// shuffles (45 operations instead of 16 horizontal reductions of 8).

#define LO8(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
#define HI8(a, b) __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31)
#define LO4(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
#define HI4(a, b) __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31)
#define LO2(a, b) __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
#define HI2(a, b) __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31)
#define LO1(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define HI1(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)

// lanes s .. s + 3 of a, each repeated 4 times (a subgroup's value to its 4 elements)
#define EXPAND4(a, s) __builtin_shufflevector(a, a, s, s, s, s, s + 1, s + 1, s + 1, s + 1, \
                                              s + 2, s + 2, s + 2, s + 2, s + 3, s + 3, s + 3, s + 3)

inline v16u max16(v16u* m) {
    v16u a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) a[i] = vmax(LO8(m[2 * i], m[2 * i + 1]), HI8(m[2 * i], m[2 * i + 1]));
    for (int i = 0; i < 4; i++) b[i] = vmax(LO4(a[2 * i], a[2 * i + 1]), HI4(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; i++) c[i] = vmax(LO2(b[2 * i], b[2 * i + 1]), HI2(b[2 * i], b[2 * i + 1]));
    return vmax(LO1(c[0], c[1]), HI1(c[0], c[1]));
}

// Copy cnt (<= 16) blocks of x to buf; returns each block's largest |x| bits (lane k; 0 for
// k >= cnt). NaN and Inf count (their bits are the largest): a lane >= F32_INF is a poisoned
// block, and otherwise the lane is the largest finite magnitude.
template <int B>
inline v16u load_group(const float* x, int cnt, float* buf) {
    v16u m[16];
    for (int k = 0; k < 16; k++) {
        v16u acc = {};
        if (k < cnt) {
            for (int q = 0; q < B / 16; q++) {
                v16u u;
                std::memcpy(&u, x + B * k + 16 * q, 64);
                std::memcpy(buf + B * k + 16 * q, &u, 64);
                acc = vmax(acc, u & ~SIGN);
            }
        }
        m[k] = acc;
    }
    return max16(m);
}

// 2^q as float32 bits on 16 lanes, q in [-149, 127]
inline v16u pow2_vec(v16i q) {
    const v16i n = q + 127, s = q + 149;
    const v16u normal = (v16u)(n > 0 ? n : (v16i){}) << 23;
    const v16u sub = splat(1u) << (v16u)(s < 0 ? (v16i){} : (s > 31 ? (v16i){} + 31 : s));
    return q >= -126 ? normal : sub;
}

template <int B>
inline void poison(float* y) {
    const float nan = float_of(F32_NAN);
    for (int j = 0; j < B; j++) y[j] = nan;
}

// ---- outputs: values (quantize) or codes (encode) --------------------------------------------
// A kernel computes each element's rounded value in the element format, o (float32 bits, sign
// in bit 31), and hands it to its output: Values multiplies it back by the block's scale(s),
// Codes writes the element's code (and the group's scale codes), so encode is the same pass.

struct Values {
    static constexpr bool CODES = false;
    float* y;             // the slice's first block's output
};

struct CodeMap {          // a format's code of one of its values o (float32 bits)
    uint32_t norm_bits;   // |o| at or above: (|o| >> shift) - off (exponent field re-biased,
    uint32_t shift;       // the top mantissa bits)
    uint32_t off;
    float sub_mul;        // below: |o| * sub_mul (the multiple of the smallest step, exact)
    uint32_t sign_bit;    // sign-magnitude: the code's sign bit where o's sign is set
    uint32_t twos;        // two's complement instead (integers): -code & mask
    uint32_t mask;
};

struct Codes {
    static constexpr bool CODES = true;
    uint8_t* data;        // element codes: B * ebits / 8 bytes per block (store_codes)
    uint8_t* scales;      // scale codes: one byte per block (HiF4: four)
    CodeMap elem, scale;  // element and scale (AMAX: the scale format; HiF4: E6M2) codes
    int32_t ebits;        // 4, 6 or 8
    uint32_t scale_nan;   // the scale code of a block holding NaN/Inf (MX, AMAX)
    uint32_t scale_bias, scale_mbits;   // MX: the scale 2^e has the code (e + bias) << mbits
};

inline v16u code_vec(v16u o, const CodeMap& c) {
    const v16u r = o & ~SIGN;
    const v16u normal = (r >> c.shift) - c.off;
    const v16u low = r < c.norm_bits ? r : (v16u){};          // keeps the conversion in range
    const v16u sub = (v16u)__builtin_convertvector((v16f)low * c.sub_mul, v16i);
    const v16u idx = r >= c.norm_bits ? normal : sub;
    const v16u neg = c.twos ? ((0u - idx) & c.mask) : (idx | c.sign_bit);
    return (v16i)o < 0 ? neg : idx;
}

typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));
typedef uint8_t v16b __attribute__((vector_size(16)));

// 16 codes to d as floatlab.plain.packing stores them: one byte each (8 bits), two per byte
// (4 bits: the even element in the low nibble), or four per three bytes (6 bits, little-endian)
inline void store_codes(uint8_t* d, v16u c, int ebits) {
    if (ebits == 6) {
        alignas(64) uint32_t t[16];
        std::memcpy(t, &c, 64);
        for (int g = 0; g < 4; g++) {
            const uint32_t v = (t[4 * g] & 63u) | ((t[4 * g + 1] & 63u) << 6) |
                               ((t[4 * g + 2] & 63u) << 12) | ((t[4 * g + 3] & 63u) << 18);
            d[3 * g] = (uint8_t)v;
            d[3 * g + 1] = (uint8_t)(v >> 8);
            d[3 * g + 2] = (uint8_t)(v >> 16);
        }
    } else if (ebits == 4) {
        const v8u ev = __builtin_shufflevector(c, c, 0, 2, 4, 6, 8, 10, 12, 14);
        const v8u od = __builtin_shufflevector(c, c, 1, 3, 5, 7, 9, 11, 13, 15);
        const v8b b = __builtin_convertvector((ev & 15u) | (od << 4), v8b);
        std::memcpy(d, &b, 8);
    } else {
        const v16b b = __builtin_convertvector(c, v16b);
        std::memcpy(d, &b, 16);
    }
}

// the first cnt lanes of c as bytes
inline void store_bytes(uint8_t* d, v16u c, int cnt) {
    alignas(16) v16b b = __builtin_convertvector(c, v16b);
    std::memcpy(d, &b, (size_t)cnt);
}

inline bool any(v16u m) {
    m |= SWAP8(m);
    m |= SWAP4(m);
    m |= SWAP2(m);
    m |= SWAP1(m);
    return m[0] != 0u;
}

// Encode codes the finite values of a block holding NaN/Inf as the plain pipeline does (its
// scale code marks it): the non-finite values of buf's blocks flagged in bad become +0 and
// their maxima are taken again.
template <int B>
inline v16u sanitize(float* buf, int cnt, v16u bad, v16u am) {
    alignas(64) uint32_t m[16], b[16];
    std::memcpy(m, &am, 64);
    std::memcpy(b, &bad, 64);
    for (int k = 0; k < cnt; k++) {
        if (!b[k]) continue;
        uint32_t acc = 0;
        for (int j = 0; j < B; j++) {
            const uint32_t a = bits_of(buf[B * k + j]) & ~SIGN;
            if (a >= F32_INF) buf[B * k + j] = 0.0f;
            else acc = a > acc ? a : acc;
        }
        m[k] = acc;
    }
    std::memcpy(&am, m, 64);
    return am;
}

// The block's B element values (ob, float32 bits) as codes
template <int B>
inline void store_block_codes(uint8_t* d, const uint32_t* ob, const Codes& o) {
    for (int q = 0; q < B / 16; q++) {
        v16u v;
        std::memcpy(&v, ob + 16 * q, 64);
        store_codes(d + 16 * q * o.ebits / 8, code_vec(v, o.elem), o.ebits);
    }
}

// Block blk's output: yk its values, or dk its codes; false where a poisoned block's values
// were written (NaN) and nothing is left to do
template <int B, class O>
inline bool block_out(const O& out, int64_t blk, uint32_t bad, float*& yk, uint8_t*& dk) {
    if constexpr (O::CODES) {
        dk = out.data + blk * B * out.ebits / 8;
        return true;
    } else {
        yk = out.y + B * blk;
        if (bad) poison<B>(yk);
        return !bad;
    }
}

// Every kernel: for each group of 16 blocks the per-block values (maximum, scale) on vectors,
// then each block's elements (vector code for the nearest modes, round_mag's loop for the
// others). Values: a poisoned block becomes NaN. Codes: its finite values are coded (MX, AMAX)
// or the kernel returns 1 at once (HiF4, whose plain pipeline gives such blocks other scales).
struct MX {
    int32_t emax_elem, lo, hi;

    template <int MODE, int RNG, int B, class O>
    static int run(const float* x, O out, int64_t nb, Grid g, Random rnd, MX p) {
        alignas(64) float buf[16 * B];
        alignas(64) float down_[16], back_[16];
        alignas(64) uint32_t bad_[16];
        alignas(64) uint32_t ob[B];
        for (int64_t b0 = 0; b0 < nb; b0 += 16, x += 16 * B) {
            const int cnt = nb - b0 < 16 ? (int)(nb - b0) : 16;
            v16u am = load_group<B>(x, cnt, buf);
            const v16u bad = (v16u)(am >= F32_INF);
            if constexpr (O::CODES) {
                if (any(bad)) am = sanitize<B>(buf, cnt, bad, am);
            }
            // floor(log2 amax): the exponent field, or for a subnormal amax that of its
            // (exact) conversion to float, less 149; amax = 0 takes the smallest scale
            const v16f conv = __builtin_convertvector((v16i)am, v16f);
            const v16i fa = (v16i)(am >> 23);
            const v16i fl2 = fa > 0 ? fa - 127 : (v16i)((v16u)conv >> 23) - 127 - 149;
            v16i e = fl2 - p.emax_elem;
            e = am == 0u ? (v16i){} + p.lo : e;
            e = e < p.lo ? (v16i){} + p.lo : (e > p.hi ? (v16i){} + p.hi : e);
            const v16u down = pow2_vec(-e), back = pow2_vec(e);
            std::memcpy(down_, &down, 64);
            std::memcpy(back_, &back, 64);
            std::memcpy(bad_, &bad, 64);
            if constexpr (O::CODES) {
                const v16u sc = (v16u)(e + (int32_t)out.scale_bias) << out.scale_mbits;
                store_bytes(out.scales + b0, bad != 0u ? splat(out.scale_nan) : sc, cnt);
            }
            for (int k = 0; k < cnt; k++) {
                const float* xk = buf + B * k;
                float* yk = nullptr;
                uint8_t* dk = nullptr;
                if (!block_out<B>(out, b0 + k, bad_[k], yk, dk)) continue;
                const float dn = down_[k], bk = back_[k];
                if constexpr (nearest(MODE)) {     // |t| < 2^-126 rounds to 0 as it is
                    for (int q = 0; q < B / 16; q++) {
                        v16u u;
                        std::memcpy(&u, xk + 16 * q, 64);
                        const v16u a = (v16u)((v16f)u * dn) & ~SIGN;
                        const v16u o = with_sign(round_near<MODE>(a, g), u & SIGN, g);
                        if constexpr (O::CODES) {
                            store_codes(dk + 16 * q * out.ebits / 8, code_vec(o, out.elem), out.ebits);
                        } else {
                            const v16f yv = (v16f)o * bk;
                            std::memcpy(yk + 16 * q, &yv, 64);
                        }
                    }
                    continue;
                }
                const int64_t i0 = (b0 + k) * B;
                for (int j = 0; j < B; j++) {
                    const uint32_t u = bits_of(xk[j]), sign = u & SIGN;
                    uint32_t a = bits_of(xk[j] * dn) & ~SIGN;
                    a = ((a < 0x800000u) & ((u & ~SIGN) != 0u)) ? 0x800000u : a;  // |t| < 2^-126
                    const uint32_t r = round_mag<MODE, RNG>(a, sign != 0u, i0 + j, g, rnd);
                    const uint32_t o = ((g.neg_zero == 0) & (r == 0u)) ? 0u : (r | sign);
                    if constexpr (O::CODES) ob[j] = o;
                    else yk[j] = float_of(o) * bk;
                }
                if constexpr (O::CODES) store_block_codes<B>(dk, ob, out);
            }
        }
        return 0;
    }
};

struct Amax {
    Grid scale;                // the scale format's grid (RNE, saturating)
    float target, s_enc, s_dec;

    template <int MODE, int RNG, int B, class O>
    static int run(const float* x, O out, int64_t nb, Grid g, Random rnd, Amax p) {
        alignas(64) float buf[16 * B];
        alignas(64) float sb_[16], senc_[16];
        alignas(64) uint32_t bad_[16];
        alignas(64) uint32_t ob[B];
        for (int64_t b0 = 0; b0 < nb; b0 += 16, x += 16 * B) {
            const int cnt = nb - b0 < 16 ? (int)(nb - b0) : 16;
            v16u am = load_group<B>(x, cnt, buf);
            const v16u bad = (v16u)(am >= F32_INF);
            if constexpr (O::CODES) {
                if (any(bad)) am = sanitize<B>(buf, cnt, bad, am);
            }
            const v16f s_in = ((v16f)am / p.target) * p.s_enc;
            const v16f s_b = (v16f)round_near<RNE>((v16u)s_in, p.scale);     // s_in >= 0
            v16f s_enc_b = 1.0f / (s_b * p.s_dec);
            s_enc_b = s_enc_b > F32_MAX ? splatf(F32_MAX) : s_enc_b;
            std::memcpy(sb_, &s_b, 64);
            std::memcpy(senc_, &s_enc_b, 64);
            std::memcpy(bad_, &bad, 64);
            if constexpr (O::CODES) {
                const v16u sc = code_vec((v16u)s_b, out.scale);
                store_bytes(out.scales + b0, bad != 0u ? splat(out.scale_nan) : sc, cnt);
            }
            for (int k = 0; k < cnt; k++) {
                const float* xk = buf + B * k;
                float* yk = nullptr;
                uint8_t* dk = nullptr;
                if (!block_out<B>(out, b0 + k, bad_[k], yk, dk)) continue;
                const float sb = sb_[k], se = senc_[k];
                const bool pos = sb > 0.0f;
                if constexpr (nearest(MODE)) {
                    for (int q = 0; q < B / 16; q++) {
                        v16u u;
                        std::memcpy(&u, xk + 16 * q, 64);
                        const v16u pp = pos ? (v16u)((v16f)u * se) : (v16u){};   // +0 where s_b = 0
                        const v16u o = with_sign(round_near<MODE>(pp & ~SIGN, g), pp & SIGN, g);
                        if constexpr (O::CODES) {
                            store_codes(dk + 16 * q * out.ebits / 8, code_vec(o, out.elem), out.ebits);
                        } else {
                            const v16f yv = ((v16f)o * sb) * p.s_dec;
                            std::memcpy(yk + 16 * q, &yv, 64);
                        }
                    }
                    continue;
                }
                const int64_t i0 = (b0 + k) * B;
                for (int j = 0; j < B; j++) {
                    const float prod = xk[j] * se;
                    const float pp = pos ? prod : 0.0f;
                    const uint32_t u = bits_of(pp), sign = u & SIGN;
                    const uint32_t r = round_mag<MODE, RNG>(u & ~SIGN, sign != 0u, i0 + j, g, rnd);
                    const uint32_t o = ((g.neg_zero == 0) & (r == 0u)) ? 0u : (r | sign);
                    if constexpr (O::CODES) ob[j] = o;
                    else yk[j] = (float_of(o) * sb) * p.s_dec;
                }
                if constexpr (O::CODES) store_block_codes<B>(dk, ob, out);
            }
        }
        return 0;
    }
};

// HiF4's scale bytes 1-3 of a block from its subgroups' E1_8 (e8) and E1_16 (e16) masks (lane
// s: subgroup s; lanes 2p and 2p + 1 share E1_8): byte 1 holds E1_8 of pairs 0..7 from bit 7
// down, bytes 2 and 3 E1_16 of subgroups 0..7 and 8..15 from bit 7 down
inline void hif4_e1_bytes(uint8_t* d, v16u e8, v16u e16) {
    const v16u w8 = {128, 0, 64, 0, 32, 0, 16, 0, 8, 0, 4, 0, 2, 0, 1, 0};
    const v16u w16 = {128, 64, 32, 16, 8, 4, 2, 1, 128, 64, 32, 16, 8, 4, 2, 1};
    v16u a = e8 & w8, b = e16 & w16;
    a += SWAP1(a);
    b += SWAP1(b);
    a += SWAP2(a);
    b += SWAP2(b);
    a += SWAP4(a);
    b += SWAP4(b);
    a += SWAP8(a);
    d[1] = (uint8_t)a[0];
    d[2] = (uint8_t)b[0];
    d[3] = (uint8_t)b[8];
}

struct HiF4 {
    template <int MODE, int RNG, int B, class O>
    static int run(const float* x, O out, int64_t nb, Grid g, Random rnd, HiF4) {
        static_assert(B == 64, "HiF4 blocks are 64 values");
        alignas(64) float buf[16 * 64];
        alignas(64) float s1_[16], r_[16];
        alignas(64) uint32_t bad_[16], s1c_[16];
        alignas(64) uint32_t ob[64];
        // one spacing below the max (the max's binade is at most emin's): step = 2^qmin, and
        // at most 2^22 steps (the rounding tricks below need it)
        const float step = float_of(g.tiny_bits), inv_step = float_of(pow2_bits(g.mbits - g.emin));
        const float nmax = float_of(g.max_bits) * inv_step;               // the largest code
        const bool uniform = g.max_bits < (uint32_t)(g.emin + 128) << 23 && g.emin - g.mbits >= -100
                             && g.mbits - g.emin <= 127 && nmax < 4194304.0f;
        for (int64_t b0 = 0; b0 < nb; b0 += 16, x += 16 * 64) {
            const int cnt = nb - b0 < 16 ? (int)(nb - b0) : 16;
            const v16u ma = load_group<64>(x, cnt, buf);
            v16f s1, r;                     // level 1 on 16 blocks (native_common.h)
            hif4_level1<v16u>((v16f)ma, s1, r);
            const v16u sb = (v16u)s1;
            const v16u bad = (v16u)(ma >= F32_INF);
            if constexpr (O::CODES) {
                if (any(bad)) return 1;
                const v16u s1c = code_vec(sb, out.scale);
                std::memcpy(s1c_, &s1c, 64);
            }
            std::memcpy(s1_, &s1, 64);
            std::memcpy(r_, &r, 64);
            std::memcpy(bad_, &bad, 64);
            for (int k = 0; k < cnt; k++) {
                const float* xk = buf + 64 * k;
                float* yk = nullptr;
                uint8_t* dk = nullptr;
                if (!block_out<B>(out, b0 + k, bad_[k], yk, dk)) continue;
                const float rk = r_[k], s1k = s1_[k];
                // levels 2 and 3 on one vector of the 16 subgroups (lane s: subgroup s): two
                // levels of pairwise shuffles take each subgroup's maximum (Mc); lanes s and s^1
                // share a group of 8 (Mb). E1_8 = [Mb * r >= 4], E1_16 = [Mc * r * 2^-E1_8 >= 2]
                v16u a[4];
                for (int q = 0; q < 4; q++) {
                    std::memcpy(&a[q], xk + 16 * q, 64);
                    a[q] &= ~SIGN;                  // finite: unsigned order is float order
                }
                const v16u p0 = vmax(LO1(a[0], a[1]), HI1(a[0], a[1]));
                const v16u p1 = vmax(LO1(a[2], a[3]), HI1(a[2], a[3]));
                const v16u mc = vmax(LO1(p0, p1), HI1(p0, p1));
                const v16u mb = vmax(mc, SWAP1(mc));
                v16u e8, e16;                               // all ones or 0
                hif4_levels23<v16u>((v16f)mb, (v16f)mc, rk, e8, e16);
                const v16u sh16 = ((e8 & 1u) + (e16 & 1u)) << 23;   // E1_8 + E1_16, << 23
                const v16u shift[4] = {EXPAND4(sh16, 0), EXPAND4(sh16, 4), EXPAND4(sh16, 8), EXPAND4(sh16, 12)};
                if constexpr (O::CODES) {
                    uint8_t* sk = out.scales + 4 * (b0 + k);
                    sk[0] = (uint8_t)s1c_[k];
                    hif4_e1_bytes(sk, e8, e16);
                }
                if constexpr (MODE == RNA || MODE == RNE) {
                    if (uniform) {
                        // one spacing 2^qmin up to the max (E1M2: 0.25 to 1.75): the code
                        // n = round(v / 2^qmin) in the float unit. RNA: trunc(v4 + 0.5), exact
                        // because v is a bfloat16 (8 significant bits); RNE: (v4 + 2^23) - 2^23.
                        // The powers of two are folded into per-subgroup factors: v4 =
                        // bf16(|x| * (r * 2^(-qmin - shift))) is bf16((|x| * r) * 2^-shift) * 2^-qmin
                        // wherever that is a normal float32, and below 2^-126 both round to code 0;
                        // y = n * (S1 * 2^qmin * 2^shift), the same exact product
                        const v16f rsh = (v16f)(splat(0x3F800000u + ((uint32_t)(g.mbits - g.emin) << 23)) - sh16) * rk;
                        const v16f ssh = (v16f)(splat(0x3F800000u) + sh16) * (s1k * step);
                        const v16f rs[4] = {EXPAND4(rsh, 0), EXPAND4(rsh, 4), EXPAND4(rsh, 8), EXPAND4(rsh, 12)};
                        const v16f ss[4] = {EXPAND4(ssh, 0), EXPAND4(ssh, 4), EXPAND4(ssh, 8), EXPAND4(ssh, 12)};
                        for (int q = 0; q < 4; q++) {
                            v16u u;
                            std::memcpy(&u, xk + 16 * q, 64);
                            v16u v = (v16u)((v16f)(u & ~SIGN) * rs[q]);
                            v = (v + 0x7FFFu + ((v >> 16) & 1u)) & 0xFFFF0000u;      // bf16, v >= 0
                            v16f v4 = (v16f)v > nmax ? splatf(nmax) : (v16f)v;     // saturates
                            v16f n;
                            if constexpr (MODE == RNA) n = __builtin_convertvector(__builtin_convertvector(v4 + 0.5f, v16i), v16f);
                            else n = (v4 + 8388608.0f) - 8388608.0f;
                            const v16u neg = (v16u)((v16f)u < 0.0f);            // -0 is not < 0
                            if constexpr (O::CODES) {
                                // the element value n * 2^qmin (exact), its sign from x's
                                const v16u o = (v16u)(n * step) | (neg & SIGN);
                                store_codes(dk + 16 * q * out.ebits / 8, code_vec(o, out.elem), out.ebits);
                            } else {
                                const v16f yv = (v16f)((v16u)n | (neg & SIGN)) * ss[q];
                                std::memcpy(yk + 16 * q, &yv, 64);
                            }
                        }
                        continue;
                    }
                }
                if constexpr (nearest(MODE)) {
                    for (int q = 0; q < 4; q++) {
                        v16u u;
                        std::memcpy(&u, xk + 16 * q, 64);
                        const v16u sh = shift[q];
                        const v16u v = bf16_round((v16u)(((v16f)(u & ~SIGN) * rk) * (v16f)(splat(0x3F800000u) - sh)));
                        const v16u c = round_near<MODE>(v, g);
                        const v16u neg = (v16u)((v16f)u < 0.0f);            // -0 is not < 0
                        const v16u o = c | (neg & SIGN);
                        if constexpr (O::CODES) {
                            store_codes(dk + 16 * q * out.ebits / 8, code_vec(o, out.elem), out.ebits);
                        } else {
                            const v16f yv = ((v16f)o * s1k) * (v16f)(splat(0x3F800000u) + sh);
                            std::memcpy(yk + 16 * q, &yv, 64);
                        }
                    }
                    continue;
                }
                alignas(64) uint32_t sh_[64];
                std::memcpy(sh_, shift, sizeof sh_);
                const int64_t i0 = (b0 + k) * 64;
                for (int j = 0; j < 64; j++) {
                    const uint32_t sh = sh_[j];
                    const uint32_t u = bits_of(xk[j]);
                    const float v = float_of(bf16_round(bits_of((float_of(u & ~SIGN) * rk) * float_of(0x3F800000u - sh))));
                    const uint32_t c = round_mag<MODE, RNG>(bits_of(v), false, i0 + j, g, rnd);
                    const bool negative = xk[j] < 0.0f;
                    const uint32_t o = negative ? (c | SIGN) : c;
                    if constexpr (O::CODES) ob[j] = o;
                    else yk[j] = (float_of(o) * s1k) * float_of(0x3F800000u + sh);
                }
                if constexpr (O::CODES) store_block_codes<64>(dk, ob, out);
            }
        }
        return 0;
    }
};

// Every mode; encode (Codes) replays the plain path's draws or has none, so it skips the hash
template <class K, int B, class O>
int by_mode(int mode, int rng, const float* x, O out, int64_t nb, const Grid& g,
            const Random& r, const K& p) {
    constexpr bool HASHED = !O::CODES;
    switch (mode) {
        case RNE: return K::template run<RNE, NONE, B>(x, out, nb, g, r, p);
        case RNA: return K::template run<RNA, NONE, B>(x, out, nb, g, r, p);
        case RNZ: return K::template run<RNZ, NONE, B>(x, out, nb, g, r, p);
        case RTZ: return K::template run<RTZ, NONE, B>(x, out, nb, g, r, p);
        case RUP: return K::template run<RUP, NONE, B>(x, out, nb, g, r, p);
        case RDN: return K::template run<RDN, NONE, B>(x, out, nb, g, r, p);
        case RTO: return K::template run<RTO, NONE, B>(x, out, nb, g, r, p);
        case SR:
            if constexpr (HASHED) if (rng == HASH) return K::template run<SR, HASH, B>(x, out, nb, g, r, p);
            return K::template run<SR, REPLAY, B>(x, out, nb, g, r, p);
        case SR_BITS:
            if constexpr (HASHED) if (rng == HASH) return K::template run<SR_BITS, HASH, B>(x, out, nb, g, r, p);
            return K::template run<SR_BITS, REPLAY, B>(x, out, nb, g, r, p);
        default:
            if constexpr (HASHED) if (rng == HASH) return K::template run<SR_HALF, HASH, B>(x, out, nb, g, r, p);
            return K::template run<SR_HALF, REPLAY, B>(x, out, nb, g, r, p);
    }
}

Random random_of(const void* draws, int64_t index0, uint64_t seed, int sr_bits) {
    return Random{draws, index0, (uint32_t)(seed & 0xFFFFFFFFu), (uint32_t)(seed >> 32), sr_bits};
}

CodeMap code_map(const uint32_t* f) {
    float sub;
    std::memcpy(&sub, f + 3, 4);
    return CodeMap{f[0], f[1], f[2], sub, f[4], f[5], f[6]};
}

// codes: 7 words of the element's CodeMap (sub_mul as float32 bits), 7 of the scale's, then
// ebits, scale_nan, scale_bias, scale_mbits
Codes codes_of(uint8_t* data, uint8_t* scales, const uint32_t* c) {
    return Codes{data, scales, code_map(c), code_map(c + 7), (int32_t)c[14], c[15], c[16], c[17]};
}

}  // namespace

// Every entry: x, y the slice's first block; nb blocks of B values; index0 the slice's first
// element's index in the blocks (HASH); draws the slice's first draw (REPLAY) or null; the
// element grid (emin, mbits, max_bits, neg_zero); mode, rng, sr_bits, seed. They return 1 for a
// block size not compiled. The *_codes entries write codes instead of values: data (element
// codes), scales (scale codes), codes (codes_of's 18 words) in place of y; NONE or REPLAY only.
extern "C" int floatlab_block_mx(const float* x, float* y, int64_t nb, int64_t B, int64_t index0,
                                 const void* draws, int mode, int rng, int sr_bits, uint64_t seed,
                                 int emin, int mbits, uint32_t max_bits, int neg_zero,
                                 int emax_elem, int lo, int hi) {
    const Grid g = grid(emin, mbits, max_bits, neg_zero);
    const Random r = random_of(draws, index0, seed, sr_bits);
    const MX p{emax_elem, lo, hi};
    if (B != 32) return 1;
    by_mode<MX, 32>(mode, rng, x, Values{y}, nb, g, r, p);
    return 0;
}

extern "C" int floatlab_block_mx_codes(const float* x, uint8_t* data, uint8_t* scales,
                                       const uint32_t* codes, int64_t nb, int64_t B,
                                       int64_t index0, const void* draws, int mode, int rng,
                                       int sr_bits, int emin, int mbits, uint32_t max_bits,
                                       int neg_zero, int emax_elem, int lo, int hi) {
    const Grid g = grid(emin, mbits, max_bits, neg_zero);
    const Random r = random_of(draws, index0, 0, sr_bits);
    if (B != 32) return 1;
    by_mode<MX, 32>(mode, rng, x, codes_of(data, scales, codes), nb, g, r, MX{emax_elem, lo, hi});
    return 0;
}

extern "C" int floatlab_block_amax(const float* x, float* y, int64_t nb, int64_t B,
                                   int64_t index0, const void* draws, int mode, int rng,
                                   int sr_bits, uint64_t seed, int emin, int mbits,
                                   uint32_t max_bits, int neg_zero, int s_emin, int s_mbits,
                                   uint32_t s_max_bits, float target, float s_enc, float s_dec) {
    const Grid g = grid(emin, mbits, max_bits, neg_zero);
    const Random r = random_of(draws, index0, seed, sr_bits);
    const Amax p{grid(s_emin, s_mbits, s_max_bits, 1), target, s_enc, s_dec};
    if (B == 16) by_mode<Amax, 16>(mode, rng, x, Values{y}, nb, g, r, p);
    else if (B == 256) by_mode<Amax, 256>(mode, rng, x, Values{y}, nb, g, r, p);
    else return 1;
    return 0;
}

extern "C" int floatlab_block_amax_codes(const float* x, uint8_t* data, uint8_t* scales,
                                         const uint32_t* codes, int64_t nb, int64_t B,
                                         int64_t index0, const void* draws, int mode, int rng,
                                         int sr_bits, int emin, int mbits, uint32_t max_bits,
                                         int neg_zero, int s_emin, int s_mbits,
                                         uint32_t s_max_bits, float target, float s_enc,
                                         float s_dec) {
    const Grid g = grid(emin, mbits, max_bits, neg_zero);
    const Random r = random_of(draws, index0, 0, sr_bits);
    const Amax p{grid(s_emin, s_mbits, s_max_bits, 1), target, s_enc, s_dec};
    const Codes o = codes_of(data, scales, codes);
    if (B == 16) by_mode<Amax, 16>(mode, rng, x, o, nb, g, r, p);
    else if (B == 256) by_mode<Amax, 256>(mode, rng, x, o, nb, g, r, p);
    else return 1;
    return 0;
}

extern "C" void floatlab_block_hif4(const float* x, float* y, int64_t nb, int64_t index0,
                                    const void* draws, int mode, int rng, int sr_bits,
                                    uint64_t seed, int emin, int mbits, uint32_t max_bits,
                                    int neg_zero) {
    by_mode<HiF4, 64>(mode, rng, x, Values{y}, nb, grid(emin, mbits, max_bits, neg_zero),
                      random_of(draws, index0, seed, sr_bits), HiF4{});
}

// returns 1 where a block holds NaN or Inf (its codes are then incomplete)
extern "C" int floatlab_block_hif4_codes(const float* x, uint8_t* data, uint8_t* scales,
                                         const uint32_t* codes, int64_t nb, int64_t index0,
                                         const void* draws, int mode, int rng, int sr_bits,
                                         int emin, int mbits, uint32_t max_bits, int neg_zero) {
    return by_mode<HiF4, 64>(mode, rng, x, codes_of(data, scales, codes), nb,
                             grid(emin, mbits, max_bits, neg_zero),
                             random_of(draws, index0, 0, sr_bits), HiF4{});
}

// out[i] = the code of the value v[i] (float32 bits) under the CodeMap map (7 words), i < n:
// what the kernels write, for native_block.py's check against the plain encoder
extern "C" void floatlab_block_code_map(const uint32_t* v, uint32_t* out, int64_t n,
                                        const uint32_t* map) {
    const CodeMap c = code_map(map);
    for (int64_t i = 0; i < n; i += 16) {
        alignas(64) uint32_t t[16] = {};
        const int64_t m = n - i < 16 ? n - i : 16;
        std::memcpy(t, v + i, 4 * m);
        v16u a;
        std::memcpy(&a, t, 64);
        const v16u r = code_vec(a, c);
        std::memcpy(t, &r, 64);
        std::memcpy(out + i, t, 4 * m);
    }
}

// out[u] = the largest finite |x| of x[4096 u .. 4096 (u + 1)) for u < nu (x holds 4096 nu
// values; NVFP4's tensor amax is the maximum of these)
extern "C" void floatlab_block_absmax(const float* x, int64_t nu, float* out) {
    for (int64_t u = 0; u < nu; u++, x += 4096) {
        v16u m = {};
        for (int q = 0; q < 256; q++) {
            v16u a;
            std::memcpy(&a, x + 16 * q, 64);
            a &= ~SIGN;
            m = vmax(m, a < F32_INF ? a : (v16u){});      // NaN and Inf count as 0
        }
        m = vmax(m, SWAP8(m));
        m = vmax(m, SWAP4(m));
        m = vmax(m, SWAP2(m));
        m = vmax(m, SWAP1(m));
        out[u] = float_of(m[0]);
    }
}
