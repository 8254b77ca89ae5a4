// The element-wise weight steps of block-wise reconstruction's training step, forward and
// backward, each in one pass (floatlab/kernels/native_recon.py says what each computes and
// which Python expression it matches). Compiled with -ffp-contract=off: every float32 product
// and sum of the forwards is the one the torch expression computes, in the same order. The
// backwards compute the same gradients in float64, accumulated in 8 lanes (element k of a row or
// group into lane k % 8), summed in a fixed tree at the end and rounded once to float32: an
// order that neither the CPU's vector width nor the threads move. Written on 8-lane GCC/clang
// vectors (two registers on AVX2, one on AVX-512, four on NEON); tails run the same steps one
// element at a time.
#include <cstdint>
#include <cstring>

namespace {

constexpr int L = 8;
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

template <class V, class T> inline V load(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <class V, class T> inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// torch.clamp (NaN passes through), on a scalar or a vector
inline float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }
inline v8f clampv(v8f x, float lo, float hi) {
    const v8f l = splat(lo), h = splat(hi);
    x = x < l ? l : x;
    return x > h ? h : x;
}

// round(d) ties to even, saturated to int16's range (torch.round(d).clamp(-32768, 32767)): the
// clamp first (the bounds are integers, so clamping and rounding commute), then the float32
// 1.5 * 2^23 trick, exact for |x| <= 2^22. NaN stays NaN.
constexpr float MAGIC = 12582912.0f;
inline float round16(float d) { const float x = clampf(d, -32768.0f, 32767.0f); return (x + MAGIC) - MAGIC; }
inline v8f round16v(v8f d) { const v8f x = clampv(d, -32768.0f, 32767.0f); return (x + splat(MAGIC)) - splat(MAGIC); }

// 8 float64 lanes as two 4-lane halves (lanes 0-3, 4-7): one AVX2 register each
struct v8d {
    v4d lo, hi;
    v8d& operator+=(const v8d& o) { lo += o.lo; hi += o.hi; return *this; }
    v8d operator*(const v8d& o) const { return {lo * o.lo, hi * o.hi}; }
    v8d operator+(const v8d& o) const { return {lo + o.lo, hi + o.hi}; }
};
inline v8d widen(v8f x) {
    return {__builtin_convertvector(__builtin_shufflevector(x, x, 0, 1, 2, 3), v4d),
            __builtin_convertvector(__builtin_shufflevector(x, x, 4, 5, 6, 7), v4d)};
}
inline v8d load8d(const double* p) { return {load<v4d>(p), load<v4d>(p + 4)}; }
// the lanes of a row's or group's tail (fewer than 8 elements, element l in lane l), added last
struct Tail {
    double d[L] = {0};
    v8d lanes() const { return load8d(d); }
};
inline void store8d(double* p, const v8d& v) { store(p, v.lo); store(p + 4, v.hi); }
inline double lanes_sum(v8d a) {
    return ((a.lo[0] + a.lo[1]) + (a.lo[2] + a.lo[3])) + ((a.hi[0] + a.hi[1]) + (a.hi[2] + a.hi[3]));
}

}  // namespace

extern "C" {

// ---- learnable weight clipping on an asymmetric integer grid (OmniQuant's LWC) --------------
// n groups of G values (w: n x G, s and z: n): out = (clamp(round(w / s) + z, 0, qmax) - z) * s
// (round as round16).
void floatlab_affine_fq_forward(const float* w, const float* s, const float* z, int64_t n, int64_t G,
                                float qmax, float* out) {
    for (int64_t b = 0; b < n; ++b) {
        const float sb = s[b], zb = z[b];
        const float* wr = w + b * G;
        float* o = out + b * G;
        int64_t k = 0;
        for (; k + L <= G; k += L) {
            const v8f x = round16v(load<v8f>(wr + k) / splat(sb)) + splat(zb);
            store(o + k, (clampv(x, 0.0f, qmax) - splat(zb)) * splat(sb));
        }
        for (; k < G; ++k) {
            const float x = round16(wr[k] / sb) + zb;
            o[k] = (clampf(x, 0.0f, qmax) - zb) * sb;
        }
    }
}

// the gradient with respect to s of sum(g * out), per group (clipped straight-through rounding):
//   sum_k g * qz  -  (sum over inside k of g * w) / s,
// x = round(w / s) + z, qz = clamp(x, 0, qmax) - z, inside = !(x < 0 || x > qmax) (where the
// clamp passes the gradient: d(qz * s)/ds = qz + s * d(w / s)/ds = qz - w / s there, qz outside)
void floatlab_affine_fq_backward(const float* w, const float* s, const float* z, const float* g, int64_t n,
                                 int64_t G, float qmax, float* gs) {
    const v8f zero = splat(0.0f), vq = splat(qmax);
    for (int64_t b = 0; b < n; ++b) {
        const float sb = s[b], zb = z[b];
        const v8f vs = splat(sb), vz = splat(zb);
        const float* wr = w + b * G;
        const float* gr = g + b * G;
        v8d acc_q = {}, acc_w = {};
        int64_t k = 0;
        for (; k + L <= G; k += L) {
            const v8f wv = load<v8f>(wr + k), gv = load<v8f>(gr + k);
            const v8f x = round16v(wv / vs) + vz;
            const v8i outside = (x < zero) | (x > vq);
            const v8d gd = widen(gv);
            acc_q += gd * widen(clampv(x, 0.0f, qmax) - vz);
            acc_w += gd * widen(outside ? zero : wv);
        }
        Tail tq, tw;
        for (int l = 0; k < G; ++k, ++l) {
            const float x = round16(wr[k] / sb) + zb;
            const bool inside = !(x < 0.0f || x > qmax);
            tq.d[l] = (double)gr[k] * (double)(clampf(x, 0.0f, qmax) - zb);
            tw.d[l] = inside ? (double)gr[k] * (double)wr[k] : 0.0;
        }
        acc_q += tq.lanes();
        acc_w += tw.lanes();
        gs[b] = (float)(lanes_sum(acc_q) - lanes_sum(acc_w) / (double)sb);
    }
}

// ---- PTQ1.61's binarized weight with a rank-1 factor -----------------------------------------
// rows x cols: out = mask[j] ? wide[i, j] : (r1[i] * (s[i] * sign[i, j] + c[i])) * r2[j],
// sign +-1, so s * sign + c is -s + c or s + c exactly as torch forms it. The signs are bits
// (bit j % 8 of byte j / 8 of a row's ceil(cols / 8) bytes: 1 for +1), the mask too (one row of
// bits for the columns); mask and wide may both be null (no salient columns).
inline v8i bits8(uint8_t byte) {
    const v8i lane = {1, 2, 4, 8, 16, 32, 64, 128};
    const int32_t b = byte;
    return (v8i{b, b, b, b, b, b, b, b} & lane) != v8i{0};
}
inline bool bit(const uint8_t* row, int64_t j) { return (row[j >> 3] >> (j & 7)) & 1; }

void floatlab_rank1_binary_forward(const float* s, const float* r1, const float* r2, const float* c,
                                   const uint8_t* sign, const uint8_t* mask, const float* wide, int64_t rows,
                                   int64_t cols, float* out) {
    const int64_t row_bytes = (cols + 7) / 8;
    for (int64_t i = 0; i < rows; ++i) {
        const float t3p = r1[i] * (s[i] + c[i]), t3n = r1[i] * (-s[i] + c[i]);
        const v8f vp = splat(t3p), vn = splat(t3n);
        const uint8_t* sg = sign + i * row_bytes;
        const float* wd = wide == nullptr ? nullptr : wide + i * cols;
        float* o = out + i * cols;
        int64_t j = 0;
        for (; j + L <= cols; j += L) {
            v8f v = (bits8(sg[j >> 3]) ? vp : vn) * load<v8f>(r2 + j);
            if (mask != nullptr) v = bits8(mask[j >> 3]) ? load<v8f>(wd + j) : v;
            store(o + j, v);
        }
        for (; j < cols; ++j)
            o[j] = (mask != nullptr && bit(mask, j)) ? wd[j] : (bit(sg, j) ? t3p : t3n) * r2[j];
    }
}

// gradients of sum(g * out) over the unmasked entries, rows [0, rows) of the arrays passed, with
// g3 = g * r2[j] and t2 = s[i] * sign + c[i] (so P, N: sums of g3 over the +1 and -1 signs):
//   g_s[i]  = sum_j g3 * r1[i] * sign = r1[i] * (P - N),
//   g_r1[i] = sum_j t2 * g3 = (s[i] + c[i]) * P + (c[i] - s[i]) * N,
//   acc_r2[i / chunk, j] += r1[i] * t2 * g   (one row of partial column sums per chunk of rows,
//   so the caller's sum over them has an order that no thread count moves); all in float64
void floatlab_rank1_binary_backward(const float* s, const float* r1, const float* r2, const float* c,
                                    const uint8_t* sign, const uint8_t* mask, const float* g, int64_t rows,
                                    int64_t cols, int64_t chunk, float* g_s, float* g_r1, double* acc_r2) {
    const int64_t row_bytes = (cols + 7) / 8;
    const v8f zero = splat(0.0f);
    for (int64_t i = 0; i < rows; ++i) {
        double* acc = acc_r2 + (i / chunk) * cols;
        const float t2p = s[i] + c[i], t2n = -s[i] + c[i];
        const float t3p = r1[i] * t2p, t3n = r1[i] * t2n;
        const v8f v3p = splat(t3p), v3n = splat(t3n);
        const uint8_t* sg = sign + i * row_bytes;
        const float* gr = g + i * cols;
        v8d a_p = {}, a_n = {};
        int64_t j = 0;
        for (; j + L <= cols; j += L) {
            v8f gg = load<v8f>(gr + j);
            if (mask != nullptr) gg = bits8(mask[j >> 3]) ? zero : gg;
            const v8i pos = bits8(sg[j >> 3]);
            const v8f g3 = gg * load<v8f>(r2 + j);
            a_p += widen(pos ? g3 : zero);
            a_n += widen(pos ? zero : g3);
            store8d(acc + j, load8d(acc + j) + widen(pos ? v3p : v3n) * widen(gg));
        }
        Tail tp, tn;
        for (int l = 0; j < cols; ++j, ++l) {
            const float gg = (mask != nullptr && bit(mask, j)) ? 0.0f : gr[j];
            const bool pos = bit(sg, j);
            const float g3 = gg * r2[j];
            (pos ? tp : tn).d[l] = (double)g3;
            acc[j] += (double)(pos ? t3p : t3n) * (double)gg;
        }
        a_p += tp.lanes();
        a_n += tn.lanes();
        const double p = lanes_sum(a_p), q = lanes_sum(a_n);
        g_s[i] = (float)((double)r1[i] * (p - q));
        g_r1[i] = (float)((double)t2p * p + (double)t2n * q);
    }
}

}  // extern "C"
