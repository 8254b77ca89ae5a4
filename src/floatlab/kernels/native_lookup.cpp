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
// x is read through its strides (sn, sc, sh_, sw_ in elements: NCHW or channels-last alike).
// The bounds are tested once per kernel row (ih) and once per output position (is the whole
// window's width inside the image?), not per element; KW > 0 fixes the kernel width at compile
// time (the usual 3, and 1), so that a window row is a few straight copies.
template <int KW>
static void unfold_rows_impl(const float* __restrict x, float* __restrict out, int64_t n0,
                             int64_t n1, int64_t N, int64_t C, int64_t H, int64_t W, int64_t G,
                             int64_t kh, int64_t kw_, int64_t sh, int64_t sw, int64_t ph,
                             int64_t pw, int64_t dh, int64_t dw, int64_t OH, int64_t OW,
                             int64_t sn, int64_t sc, int64_t sy, int64_t sx) {
    const int64_t kw = KW > 0 ? KW : kw_;
    const int64_t Cg = C / G, Kg = Cg * kh * kw, L = OH * OW;
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t n = n0; n < n1; ++n) {
            const float* planes = x + n * sn + g * Cg * sc;
            for (int64_t oh = 0; oh < OH; ++oh) {
                float* row = out + ((g * N + n) * L + oh * OW) * Kg;
                for (int64_t ow = 0; ow < OW; ++ow) {
                    const int64_t iw0 = ow * sw - pw;
                    const bool inside = iw0 >= 0 && iw0 + (kw - 1) * dw < W;
                    for (int64_t c = 0; c < Cg; ++c) {
                        const float* plane = planes + c * sc;
                        for (int64_t i = 0; i < kh; ++i) {
                            const int64_t ih = oh * sh - ph + i * dh;
                            if (ih < 0 || ih >= H) {
                                for (int64_t j = 0; j < kw; ++j) *row++ = 0.0f;
                            } else if (inside) {
                                const float* src = plane + ih * sy + iw0 * sx;
                                for (int64_t j = 0; j < kw; ++j) *row++ = src[j * dw * sx];
                            } else {
                                const float* line = plane + ih * sy;
                                for (int64_t j = 0; j < kw; ++j) {
                                    const int64_t iw = iw0 + j * dw;
                                    *row++ = (iw >= 0 && iw < W) ? line[iw * sx] : 0.0f;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

extern "C" void floatlab_unfold_rows(const float* __restrict x, float* __restrict out,
                                     int64_t n0, int64_t n1, int64_t N, int64_t C, int64_t H,
                                     int64_t W, int64_t G, int64_t kh, int64_t kw, int64_t sh,
                                     int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                     int64_t OH, int64_t OW, int64_t sn, int64_t sc,
                                     int64_t sy, int64_t sx) {
    if (kw == 3)
        unfold_rows_impl<3>(x, out, n0, n1, N, C, H, W, G, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, sn, sc, sy, sx);
    else if (kw == 1)
        unfold_rows_impl<1>(x, out, n0, n1, N, C, H, W, G, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, sn, sc, sy, sx);
    else
        unfold_rows_impl<0>(x, out, n0, n1, N, C, H, W, G, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, sn, sc, sy, sx);
}

// col2im from the implicit GEMM's rows: rows (G, N*L, Kg) contiguous -> out (N, C, H, W),
// F.fold(_unrows(rows, N), ...) bit for bit: ATen's col2im loop order (per sample: zero the
// image, then for each column channel c_col = c*kh*kw + i*kw + j in order, each output position
// in order, add the column value into its pixel), so every pixel sums its contributions in the
// same order, in float32, starting from +0. The bounds are not tested per element: for each
// (c_col, oh) inside the image, the output columns ow whose pixel lies inside are one range
// [lo, hi), computed once (the positions outside add nothing in ATen's loop either).
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
            // iw = ow * sw + off lies in [0, W) for ow in [lo, hi)
            const int64_t off = j * dw - pw;
            const int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
            const int64_t hi_raw = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
            const int64_t hi = hi_raw < OW ? hi_raw : OW;
            for (int64_t oh = 0; oh < OH; ++oh) {
                const int64_t ih = oh * sh - ph + i * dh;
                if (ih < 0 || ih >= H) continue;
                float* line = im + (c * H + ih) * W;
                const float* src = col + oh * OW * Kg;
                for (int64_t ow = lo; ow < hi; ++ow) line[ow * sw + off] += src[ow * Kg];
            }
        }
    }
}

// The largest finite magnitude of n float32 values (0 when there is none): max |x| over the
// values that are neither infinite nor NaN, the value floatlab.nn.scaling.amax returns (a max
// involves no rounding, so any order of comparisons gives it). 16 running maxima in a GCC/Clang
// vector (the compiler maps it to the CPU's registers): `m > v ? m : v` is a lane-wise max here
// (neither operand is ever NaN: v is |x| or 0, m starts at 0).
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

extern "C" float floatlab_amax(const float* __restrict x, int64_t n) {
    const float big = 3.40282346638528859812e+38f;   // FLT_MAX
    const i32x16 nosign = (i32x16){} + 0x7fffffff;
    f32x16 m = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        f32x16 v;
        std::memcpy(&v, x + i, sizeof v);
        const f32x16 a = (f32x16)((i32x16)v & nosign);
        const f32x16 f = (a <= big) ? a : (f32x16){};   // false for inf and NaN
        m = (m > f) ? m : f;
    }
    float r = 0.0f;
    for (int k = 0; k < 16; ++k) r = r > m[k] ? r : m[k];
    for (; i < n; ++i) {
        const float a = __builtin_fabsf(x[i]);
        const float f = (a <= big) ? a : 0.0f;
        r = r > f ? r : f;
    }
    return r;
}
