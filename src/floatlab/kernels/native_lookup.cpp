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

// im2col straight into the implicit GEMM's row layout: out (G, N*L, Kg) contiguous, row
// (n, oh, ow), column c*kh*kw + i*kw + j of group g (c a channel of the group), zero where the
// window reaches into the padding: exactly F.unfold's values, laid out as
// unfold(x).view(N, G, Kg, L).permute(1, 0, 3, 2) made contiguous. A gather: no arithmetic.
extern "C" void floatlab_unfold_rows(const float* __restrict x, float* __restrict out,
                                     int64_t n0, int64_t n1, int64_t N, int64_t C, int64_t H,
                                     int64_t W, int64_t G, int64_t kh, int64_t kw, int64_t sh,
                                     int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                     int64_t OH, int64_t OW) {
    const int64_t Cg = C / G, Kg = Cg * kh * kw, L = OH * OW;
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t n = n0; n < n1; ++n) {
            for (int64_t oh = 0; oh < OH; ++oh) {
                for (int64_t ow = 0; ow < OW; ++ow) {
                    float* row = out + ((g * N + n) * L + oh * OW + ow) * Kg;
                    for (int64_t c = 0; c < Cg; ++c) {
                        const float* plane = x + ((n * C) + g * Cg + c) * H * W;
                        for (int64_t i = 0; i < kh; ++i) {
                            const int64_t ih = oh * sh - ph + i * dh;
                            const bool hin = ih >= 0 && ih < H;
                            for (int64_t j = 0; j < kw; ++j) {
                                const int64_t iw = ow * sw - pw + j * dw;
                                *row++ = (hin && iw >= 0 && iw < W) ? plane[ih * W + iw] : 0.0f;
                            }
                        }
                    }
                }
            }
        }
    }
}

// col2im from the implicit GEMM's rows: rows (G, N*L, Kg) contiguous -> out (N, C, H, W),
// F.fold(_unrows(rows, N), ...) bit for bit: ATen's col2im loop order (per sample: zero the
// image, then for each column channel c_col = c*kh*kw + i*kw + j in order, each output position
// in order, add the column value into its pixel), so every pixel sums its contributions in the
// same order, in float32, starting from +0.
extern "C" void floatlab_fold_rows(const float* __restrict rows, float* __restrict out,
                                   int64_t N, int64_t C, int64_t H, int64_t W, int64_t G,
                                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                   int64_t pw, int64_t dh, int64_t dw, int64_t OH, int64_t OW) {
    const int64_t Cg = C / G, Kg = Cg * kh * kw, L = OH * OW;
    for (int64_t n = 0; n < N; ++n) {
        float* im = out + n * C * H * W;
        for (int64_t k = 0; k < C * H * W; ++k) im[k] = 0.0f;
        for (int64_t c_col = 0; c_col < C * kh * kw; ++c_col) {
            const int64_t j = c_col % kw, i = (c_col / kw) % kh, c = c_col / kh / kw;
            const int64_t g = c / Cg, kk = c_col - g * Kg;
            const float* col = rows + (g * N + n) * L * Kg + kk;
            for (int64_t oh = 0; oh < OH; ++oh) {
                const int64_t ih = oh * sh - ph + i * dh;
                for (int64_t ow = 0; ow < OW; ++ow) {
                    const int64_t iw = ow * sw - pw + j * dw;
                    if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                        im[(c * H + ih) * W + iw] += col[(oh * OW + ow) * Kg];
                }
            }
        }
    }
}
