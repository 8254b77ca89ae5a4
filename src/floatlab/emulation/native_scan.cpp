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
