// One pass over the float32 results of an operation, collecting the positions the emulation must
// redo in float64 (floatlab/emulation/scan.py says why each test is enough). Reads only; writes
// the flat positions of the hits, in order, and returns their number. Each block of 256 elements
// is tested branch-free (the compiler vectorizes it); only blocks with a hit are walked again,
// writing every position and advancing past the hits (no branch to mispredict).
#include <cstdint>
#include <cstring>

namespace {
constexpr int64_t kBlock = 256;

inline uint32_t bits_of(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return u;
}

template <class Test>
int64_t collect(int64_t n, int64_t* __restrict pos, Test test) {
    int64_t k = 0;
    uint8_t hit[kBlock];
    for (int64_t base = 0; base < n; base += kBlock) {
        const int64_t m = n - base < kBlock ? n - base : kBlock;
        uint8_t any = 0;
        for (int64_t j = 0; j < m; ++j) {
            hit[j] = test(base + j);
            any |= hit[j];
        }
        if (any)
            for (int64_t j = 0; j < m; ++j) {     // branch-free compaction: pos has room for n
                pos[k] = base + j;
                k += hit[j];
            }
    }
    return k;
}
}  // namespace

// Hits: bits & mask == value and (y == nullptr or x != y as floats: NaN differs from everything),
// or (tiny and not |x| >= 2^-126: zero, float32 subnormals and NaN).
extern "C" int64_t floatlab_scan_bits(const float* __restrict x, const float* __restrict y, int64_t n,
                                      uint32_t mask, uint32_t value, int tiny, int64_t* __restrict pos) {
    const float min_normal = 1.17549435082228750797e-38f;   // 2^-126
    if (y != nullptr && tiny)
        return collect(n, pos, [&](int64_t i) {
            const float v = x[i];
            return (uint8_t)((((bits_of(v) & mask) == value) & !(v == y[i])) | !(__builtin_fabsf(v) >= min_normal));
        });
    if (y != nullptr)
        return collect(n, pos, [&](int64_t i) {
            const float v = x[i];
            return (uint8_t)(((bits_of(v) & mask) == value) & !(v == y[i]));
        });
    if (tiny)
        return collect(n, pos, [&](int64_t i) {
            const float v = x[i];
            return (uint8_t)(((bits_of(v) & mask) == value) | !(__builtin_fabsf(v) >= min_normal));
        });
    return collect(n, pos, [&](int64_t i) { return (uint8_t)((bits_of(x[i]) & mask) == value); });
}

// Hits: the low `shift` bits r of the significand lie within t of a multiple of 2^shift
// (r < t or r >= 2^shift - t), or the exponent field is 0 (zero, subnormal) or 255 (inf, NaN).
extern "C" int64_t floatlab_scan_grid(const float* __restrict x, int64_t n, int shift, uint32_t t,
                                      int64_t* __restrict pos) {
    const uint32_t low = (1u << shift) - 1u;
    return collect(n, pos, [&](int64_t i) {
        const uint32_t u = bits_of(x[i]);
        const uint32_t e = (u >> 23) & 0xffu;
        return (uint8_t)((((u + t) & low) < 2u * t) | (e == 0u) | (e == 0xffu));
    });
}

// The nudged redo of Emulation._nudged (mode.py says why it is exact): for each flat position
// pos[i] of a float32 result o of a + b, a - b, b - a, a * b, a * a, a / b or 1 / a, the side of
// the exact value v against o, decided exactly in float64 (TwoSum for sums; a * b and o * b are
// exact products of float32 numbers), and where v != o the float32 neighbour of o on that side.
// An operand is a scalar (kind 0: `s`), indexed like the result (kind 1: x[pos]) or a trailing
// broadcast of m elements (kind 2: x[pos % m]). Writes the moved positions and their neighbours
// in order and returns their number, or -1 where an operand or o is not finite (the caller redoes
// those in float64). Same float64 operations in the same order as the NumPy version (no FMA:
// built with -ffp-contract=off).
namespace {
inline double operand(int kind, const float* x, int64_t m, double s, int64_t p) {
    return kind == 0 ? s : (double)x[kind == 1 ? p : p % m];
}
inline double sign_of(double d) { return (double)((d > 0) - (d < 0)); }
}  // namespace

extern "C" int64_t floatlab_nudge(int op, const float* __restrict o, const int64_t* __restrict pos, int64_t n,
                                  int akind, const float* __restrict a, int64_t am, double as,
                                  int bkind, const float* __restrict b, int64_t bm, double bs,
                                  int64_t* __restrict moved, float* __restrict stepped) {
    enum { ADD = 0, SUB, RSUB, MUL, SQUARE, DIV, RECIPROCAL };
    for (int64_t i = 0; i < n; ++i) {
        const int64_t p = pos[i];
        const double x = operand(akind, a, am, as, p);
        const double y = (op == SQUARE || op == RECIPROCAL) ? 0.0 : operand(bkind, b, bm, bs, p);
        const double ov = (double)o[p];
        if (!__builtin_isfinite(x) || !__builtin_isfinite(y) || !__builtin_isfinite(ov))
            return -1;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t p = pos[i];
        double x = operand(akind, a, am, as, p);
        double y = (op == SQUARE || op == RECIPROCAL) ? 0.0 : operand(bkind, b, bm, bs, p);
        const float of = o[p];
        const double ov = (double)of;
        double side;
        if (op == ADD || op == SUB || op == RSUB) {
            if (op == SUB) {
                y = -y;
            } else if (op == RSUB) {
                const double t = x;
                x = y;
                y = -t;
            }
            const double s = x + y;
            const double bp = s - x;
            const double e = (x - (s - bp)) + (y - bp);
            const double d = s - ov;
            side = d != 0 ? sign_of(d) : sign_of(e);
        } else if (op == MUL || op == SQUARE) {
            const double prod = op == MUL ? x * y : x * x;
            side = sign_of(prod - ov);
        } else {                                       // DIV, RECIPROCAL: v - o = (a - o b) / b
            double num = x, den = y;
            if (op == RECIPROCAL) {
                num = 1.0;
                den = x;
            }
            side = sign_of(num - ov * den) * sign_of(den);
        }
        if (side != 0) {
            moved[k] = p;
            stepped[k] = __builtin_nextafterf(of, side > 0 ? __builtin_inff() : -__builtin_inff());
            ++k;
        }
    }
    return k;
}

// float64 -> float32 with round-to-odd (rounding.round_to_odd_float32 says why): the float32
// nearest x, with its last bit stepped toward zero where that rounding went up in magnitude and
// then set where the result is inexact. The same operations as the torch and NumPy versions.
extern "C" void floatlab_round_to_odd(const double* __restrict x, float* __restrict out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const double v = x[i];
        const float r = (float)v;
        const double back = (double)r;
        const uint32_t inexact = back != v;
        const uint32_t toward_zero = inexact & ((uint32_t)(back > v) ^ (uint32_t)(v < 0));
        const uint32_t bits = (bits_of(r) - toward_zero) | inexact;
        std::memcpy(out + i, &bits, 4);
    }
}
