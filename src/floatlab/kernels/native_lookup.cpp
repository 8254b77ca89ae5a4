// Rounding float32 values by table lookup, optionally between a power-of-two scale and unscale:
// y = table[key(x * s)] / s, the key being (sign, exponent, top mantissa bits, sticky); see
// floatlab/kernels/lookup.py for why one table entry serves every value of a key.
// Built with -ffp-contract=off and without -ffast-math: the product and the quotient are the
// IEEE float32 operations torch performs for `t * s` and `q / s`. -fno-trapping-math (it lets
// the compiler turn the selects below into vector blends) changes no value, only whether
// floating-point exception flags may be raised by work whose result is discarded.
#include <cstdint>
#include <cstring>

extern "C" void floatlab_lookup_round(const float* __restrict x, float* __restrict y, int64_t n,
                                      const float* __restrict table, int shift, float scale,
                                      int scaled) {
    const uint32_t low = (1u << shift) - 1u;
    if (!scaled) {
        for (int64_t i = 0; i < n; ++i) {
            uint32_t u;
            std::memcpy(&u, x + i, 4);
            y[i] = table[((u >> shift) << 1) | (uint32_t)((u & low) != 0u)];
        }
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i] * scale;
        uint32_t u;
        std::memcpy(&u, &v, 4);
        y[i] = table[((u >> shift) << 1) | (uint32_t)((u & low) != 0u)] / scale;
    }
}

// Integer formats (spacing 1 everywhere, saturating, signed, no -0), optionally between a
// power-of-two scale and unscale: round-to-nearest-even, or stochastic rounding against the
// caller's float64 uniform draws u (up when u < frac, frac = |v| - floor|v| exactly), the
// decisions of floatlab.kernels.scalar.quantize_kernel; NaN gives the NaN 0x7fc00000 with the
// input's sign. Branch-free (selects only), so that the compiler vectorizes it: an infinity
// gives frac = inf - inf = NaN, no rounding up, and saturates like any value above the max.
static inline float int_round_one(float v, bool sr, double u, float max_pos, float max_neg) {
    const float big = 8388608.0f;                  // 2^23: from here on every float is an integer
    const float a = __builtin_fabsf(v);
    // below 2^23, a + 2^23 lies where the float spacing is 1: the sum rounds a to the nearest
    // integer, ties to even (the default rounding mode, which torch.round also follows), and
    // subtracting 2^23 again is exact; floor is that integer, less one where it rounded up
    const float t = (a + big) - big;
    const bool small = a < big;                    // false for inf and NaN: they pass through
    const float fl = small ? ((t > a) ? t - 1.0f : t) : a;
    const float f = a - fl;                        // exact (NaN for inf and NaN)
    float m;
    if (sr) {
        m = fl + ((u < (double)f) ? 1.0f : 0.0f);
    } else {
        m = small ? t : a;
    }
    const float mag = (v < 0.0f) ? max_neg : max_pos;    // -0 and NaN: either gives the same result
    m = m > mag ? mag : m;                         // inf saturates like any value above the max
    float r = __builtin_copysignf(m, v);
    r = (r == 0.0f) ? 0.0f : r;
    return (a != a) ? __builtin_copysignf(__builtin_nanf(""), v) : r;
}

extern "C" void floatlab_int_round(const float* __restrict x, float* __restrict y, int64_t n,
                                   const double* __restrict u, float max_pos, float max_neg,
                                   float scale, int scaled) {
    if (u && scaled) {
        for (int64_t i = 0; i < n; ++i) y[i] = int_round_one(x[i] * scale, true, u[i], max_pos, max_neg) / scale;
    } else if (u) {
        for (int64_t i = 0; i < n; ++i) y[i] = int_round_one(x[i], true, u[i], max_pos, max_neg);
    } else if (scaled) {
        for (int64_t i = 0; i < n; ++i) y[i] = int_round_one(x[i] * scale, false, 0.0, max_pos, max_neg) / scale;
    } else {
        for (int64_t i = 0; i < n; ++i) y[i] = int_round_one(x[i], false, 0.0, max_pos, max_neg);
    }
}
