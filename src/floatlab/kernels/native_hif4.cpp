// HiFloat4's scale pass in C++ (see floatlab/kernels/native.py, which compiles and calls it).
//
// For each 64-value block of float32 values (FORMATS.md section 2.2, floatlab/plain/hif4.py):
//   bad   : 1 if the block holds NaN or Inf (the caller poisons it; its other outputs are unused)
//   r, s1 : r = bf16(1 / S1), S1 = E6M2(RNE)(clamp(bf16(Ma * bf16(1/7)), 2^-48, 1.5 * 2^15))
//   shift : E1_8 + E1_16 for every element (0, 1 or 2), E1_8 = [Mb * r >= 4],
//           E1_16 = [(Mc * r) * 2^-E1_8 >= 2]; every product a float32 product, as in the
//           reference (no FMA contraction: compiled with -ffp-contract=off)
//
// One 16-lane vector holds 4 subgroups of 4 (lanes 4k..4k+3), i.e. 2 groups of 8. The maxima are
// taken with lane shuffles, so each lane ends up holding its own subgroup's and group's maximum:
// no reduction to a smaller array and no broadcast back. GCC and clang vector extensions; the
// compiler picks the machine's vector width (-march=native).

#include <stdint.h>
#include <string.h>

#include "native_common.h"

using namespace floatlab_native;

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef int8_t v16b __attribute__((vector_size(16)));

static inline v16f vmax(v16f a, v16f b) { return a > b ? a : b; }

#define SWAP1(a) __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)
#define SWAP2(a) __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)
#define SWAP4(a) __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)
#define SWAP8(a) __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)

extern "C" void floatlab_hif4_scales(const float *x, int64_t nb, uint8_t *bad, float *r_out,
                                     float *s1_out, int8_t *shift) {
    for (int64_t b = 0; b < nb; b++) {
        v16f mc[4], mb[4];
        v16i nonfinite = {};
        v16f m = {};
        for (int q = 0; q < 4; q++) {
            v16i u;
            memcpy(&u, x + 64 * b + 16 * q, sizeof u);
            u &= 0x7FFFFFFF;                     // |x|
            v16i inf = u >= 0x7F800000;          // -1 where Inf or NaN
            nonfinite |= inf;
            v16f a = (v16f)(u & ~inf);           // non-finite values count as 0
            a = vmax(a, SWAP1(a));
            mc[q] = vmax(a, SWAP2(a));           // each lane: its subgroup's max (Mc)
            mb[q] = vmax(mc[q], SWAP4(mc[q]));   // each lane: its group's max (Mb)
            m = vmax(m, mb[q]);
        }
        m = vmax(m, SWAP8(m));                   // lane 0: the block's max (Ma)
        int any_bad = 0;
        for (int i = 0; i < 16; i++) any_bad |= nonfinite[i];
        float s1, r;                             // level 1 (native_common.h)
        hif4_level1<uint32_t>(m[0], s1, r);
        bad[b] = any_bad != 0;
        r_out[b] = r;
        s1_out[b] = s1;
        for (int q = 0; q < 4; q++) {
            v16u e8, e16;                                           // all ones or 0
            hif4_levels23<v16u>(mb[q], mc[q], r, e8, e16);
            v16b s = __builtin_convertvector(-((v16i)e8 + (v16i)e16), v16b);
            memcpy(shift + 64 * b + 16 * q, &s, sizeof s);
        }
    }
}
