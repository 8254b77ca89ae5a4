"""A slow, obviously correct oracle for the block formats NVFP4 and HiFloat4 (HiF4).

Written from /work/shared/FORMATS.md (sections 0, 2.2 and 4) and Huawei's amct reference
(``amct_pytorch/quantization/dtypes/hifp_impl.py``: ``hif4_encode``/``hif4_pack`` and the pure-torch
``_hif4_reference_quantize``, which agree with each other). It shares no code with the fast path:
every value is a Python float, every rounding is done exactly with ``Fraction`` on a binary grid,
one block at a time, one element at a time.

Rounding helpers. ``f32``/``bf16_rne`` round a Python float once, exactly. Where the spec says an
operation is done "in float32" the oracle computes it in float64 and then calls ``f32``; for a
single +, *, / this equals the correctly rounded float32 result (53 >= 2*24 + 2, so the double
rounding is innocuous). Where amct first rounds a product to float32 and *then* to bf16, the oracle
does the same (``bf16_rne(f32(a * b))``), since that can differ from one rounding.
"""

from __future__ import annotations

import math
from fractions import Fraction

NAN = float("nan")
INF = float("inf")


# ---------------------------------------------------------------- exact scalar rounding
def _floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for a Fraction a > 0, exactly."""
    k = a.numerator.bit_length() - a.denominator.bit_length()
    if a < Fraction(2) ** k:
        k -= 1
    return k


def _round_int(q: Fraction, ties: str) -> int:
    """Round q >= 0 to an integer: nearest, ties to even ("rne") or away from zero ("rna")."""
    fl = math.floor(q)
    frac = q - fl
    if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and (ties == "rna" or fl % 2 == 1)):
        return fl + 1
    return fl


def _round_binary(x: float, mant_bits: int, emin: int, emax: int | None, ties: str = "rne") -> float:
    """Round x to the binary grid with ``mant_bits`` fraction bits, normals from 2^emin (subnormals
    below, same spacing as at 2^emin); a result >= 2^(emax+1) is +-Inf (IEEE overflow)."""
    if math.isnan(x) or math.isinf(x) or x == 0:
        return x
    a = abs(Fraction(x))
    ulp = Fraction(2) ** (max(_floor_log2(a), emin) - mant_bits)
    r = _round_int(a / ulp, ties) * ulp
    if emax is not None and r >= Fraction(2) ** (emax + 1):
        return math.copysign(INF, x)
    return math.copysign(float(r), x)  # exact: r lies on a grid float64 holds; keeps -0.0


def f32(x: float) -> float:
    """Round a Python float to the nearest float32 (ties to even, IEEE overflow to +-Inf)."""
    return _round_binary(x, 23, -126, 127)


F32_MAX = float((2 - Fraction(2) ** -23) * Fraction(2) ** 127)  # 3.4028234663852886e38


def f32_input(x: float) -> float:
    """A block format's float32 input from a Python float (FORMATS.md 0, floatlab's decision for
    float64 input): rounded to nearest, a finite value beyond float32's range saturating to
    +-F32_MAX instead of overflowing to +-Inf; +-Inf and NaN stay."""
    if math.isfinite(x) and abs(x) > F32_MAX:
        return math.copysign(F32_MAX, x)
    return f32(x)


def bf16_rne(x: float) -> float:
    """Round a Python float to the nearest bfloat16 (ties to even, IEEE overflow to +-Inf)."""
    return _round_binary(x, 7, -126, 127)


def _fdiv(a: float, b: float) -> float:
    """IEEE a / b for Python floats (x/0 gives +-Inf or NaN instead of raising)."""
    if b == 0:
        return NAN if (a == 0 or math.isnan(a)) else math.copysign(INF, a) * math.copysign(1.0, b)
    return a / b


def _amax(xs: list[float]) -> float:
    """max |x|; NaN if any x is NaN (Python's max() would silently depend on the order)."""
    if any(math.isnan(v) for v in xs):
        return NAN
    return max(abs(v) for v in xs)


# ---------------------------------------------------------------- NVFP4 (FORMATS.md section 4)
E2M1_MAGS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitude index = 3-bit E2M1 code


def e4m3_rne(x: float) -> float:
    """x >= 0 rounded to E4M3 (ml_dtypes float8_e4m3fn): RNE, subnormals down to 2^-9, largest
    finite 448; a result above 448 (|x| > 464, or Inf) is NaN (no saturation, as ml_dtypes)."""
    r = _round_binary(x, 3, -6, None)
    return NAN if (math.isnan(r) or abs(r) > 448) else r


def e4m3_code(v: float) -> int:
    """The float8_e4m3fn byte of a non-negative E4M3 value (NaN -> 0x7F)."""
    if math.isnan(v):
        return 0x7F
    if v == 0:
        return 0x00
    a = Fraction(v)
    e = _floor_log2(a)
    if e < -6:  # subnormal: exponent field 0, mantissa in units of 2^-9
        return int(a / Fraction(2) ** -9)
    return ((e + 7) << 3) | int((a / Fraction(2) ** e - 1) * 8)


def e2m1_index(y: float, rounding: str) -> int:
    """Magnitude index (0..7) of |y| rounded to E2M1, saturating at 6 (Inf -> 6).
    Ties go to the even index (= even mantissa bit) for "rne", to the larger one for "rna"."""
    if math.isinf(y) or abs(y) >= 6:
        return 7
    a = abs(Fraction(y))
    i = max(k for k in range(8) if Fraction(E2M1_MAGS[k]) <= a)  # lower neighbour
    lo, hi = Fraction(E2M1_MAGS[i]), Fraction(E2M1_MAGS[i + 1])
    if a - lo < hi - a:
        return i
    if a - lo > hi - a:
        return i + 1
    return i + 1 if (rounding == "rna" or i % 2 == 1) else i


def _nvfp4_block(xb, s_enc, s_dec, divisor, rounding):
    """One 16-element block with the block max mapped to ``divisor`` (6, or 4 for 4/6).
    Returns (values, scale_code, elem_codes)."""
    amax_b = _amax(xb)
    s_dec_b = f32(amax_b / divisor)
    s_b = e4m3_rne(f32(s_dec_b * s_enc))
    code = e4m3_code(s_b)
    if math.isnan(s_b) or not math.isfinite(s_dec):  # poisoned block: NaN values, codes 0
        return [NAN] * len(xb), code, [0] * len(xb)
    if s_b == 0:  # zero block scale: every element is +0
        return [0.0] * len(xb), code, [0] * len(xb)
    s_enc_b = min(f32(_fdiv(1.0, f32(s_b * s_dec))), F32_MAX)  # saturates (TransformerEngine)
    values, codes = [], []
    for xi in xb:
        y = f32(xi * s_enc_b)
        if math.isnan(y):  # only reachable for absurd tensor scales (f32 under/overflow)
            values.append(NAN)
            codes.append(0)
            continue
        idx = e2m1_index(y, rounding)
        sign = 1 if math.copysign(1.0, y) < 0 else 0  # sign bit of y: -0.0 and -tiny give code 8
        q = -E2M1_MAGS[idx] if sign else E2M1_MAGS[idx]
        values.append(f32(f32(q * s_b) * s_dec))
        codes.append(sign * 8 + idx)
    return values, code, codes


def nvfp4_reference(x: list[float], *, four_over_six: bool = False, tensor_amax: float | None = None,
                    elem_rounding: str = "rne") -> dict:
    """NVFP4 fake quantization of a flat tensor (length a multiple of 16), FORMATS.md section 4.

    Every step in float32: the input is ``f32_input(x)`` (a finite value beyond float32's range
    saturates to +-F32_MAX); amax_t = max|x| (or ``tensor_amax``); s_enc = f32(6*448/amax_t)
    (6*256 with ``four_over_six``), saturated to F32_MAX when that overflows (an amax_t below
    7.9e-36), 1.0 if amax_t == 0; s_dec = f32(1/s_enc). As TransformerEngine's
    ``compute_global_encode_scaling_factor_FP4`` and ``compute_scaling_coefficient``. Per block:
    s_b = e4m3_rne(f32(f32(amax_b/6) * s_enc)); s_enc_b = min(f32(1/f32(s_b*s_dec)), F32_MAX); element code =
    E2M1(f32(x*s_enc_b)) with saturation at 6; value = f32(f32(q*s_b)*s_dec). ``four_over_six``
    also tries amax_b/4 and keeps the candidate with the lower float64 SSE (tie: keep "6").

    Non-finite input: plain IEEE float32 propagation, then a block whose E4M3 scale is NaN (0x7F),
    or any block when s_dec is not finite, decodes to all NaN with element codes 0. So a NaN
    anywhere (tensor_amax None) makes amax_t NaN and the whole tensor NaN (every scale code 0x7F,
    tensor_scale NaN); an Inf makes s_enc = 0, s_dec = Inf: every value NaN, the Inf block's
    scale code 0x7F and the other blocks' 0x00. With a finite ``tensor_amax`` only the blocks
    holding a NaN/Inf become NaN. Overflow of the E4M3 scale (a ``tensor_amax`` smaller than the
    data) gives NaN as ml_dtypes does, not saturation.
    """
    if len(x) % 16:
        raise ValueError("NVFP4 needs a length that is a multiple of 16")
    if elem_rounding not in ("rne", "rna"):
        raise ValueError(elem_rounding)
    xs = [f32_input(float(v)) for v in x]
    amax_t = _amax(xs) if tensor_amax is None else f32(float(tensor_amax))
    s_enc = 1.0 if amax_t == 0 else f32(_fdiv(6.0 * (256 if four_over_six else 448), amax_t))
    if math.isinf(s_enc):
        s_enc = F32_MAX
    s_dec = f32(_fdiv(1.0, s_enc))
    values, scale_codes, elem_codes = [], [], []
    for start in range(0, len(xs), 16):
        xb = xs[start:start + 16]
        best = _nvfp4_block(xb, s_enc, s_dec, 6.0, elem_rounding)
        if four_over_six:
            alt = _nvfp4_block(xb, s_enc, s_dec, 4.0, elem_rounding)
            sse6 = sum((v - xi) ** 2 for v, xi in zip(best[0], xb))
            sse4 = sum((v - xi) ** 2 for v, xi in zip(alt[0], xb))
            if sse4 < sse6:  # strict: a tie (or a NaN) keeps the "6" candidate
                best = alt
        values += best[0]
        scale_codes.append(best[1])
        elem_codes += best[2]
    return dict(values=values, scale_codes=scale_codes, tensor_scale=s_dec, elem_codes=elem_codes)


# ---------------------------------------------------------------- HiF4 (FORMATS.md section 2.2)
BF16_ONE_SEVENTH = bf16_rne(f32(1.0 / 7.0))  # 0.142578125, as amct: bf16(fp32(1/7))


def hif4_reference(block: list[float], *, elem_rounding: str = "rna") -> dict:
    """HiF4 encode + decode of one block of 64 float32 values, as amct ``hif4_encode``/``hif4_pack``.

    Layout [8 groups][2 subgroups][4 elements]. Roundings, each exactly as amct does them
    (f32 = float32 RNE, bf16 = bfloat16 RNE; the input is NOT cast to bf16, amct uses float32):
      input = f32_input(x): float32, a finite float64 beyond float32's range saturating to +-F32_MAX
      sf   = bf16(f32(Ma * bf16(1/7))), clamped to [2^-48, 49152], then E6M2 (RNE on 2 mantissa bits)
      r    = bf16(f32(1 / S1))
      E1_8 = [f32(Mb * r) >= 4]                 (float32 product, no bf16 step)
      E1_16= [f32(f32(Mc * r) * 2^-E1_8) >= 2]  (float32, no bf16 step)
      v    = bf16(f32(f32(|x| * r) * 2^-(E1_8+E1_16)))
      c    = min(7, round(4v)): half away ("rna", amct floor(4v + 0.5)) or half even ("rne", A6)
    Non-finite: the scales and codes are computed with NaN/Inf replaced by 0 (their nibble is 0x0),
    the E6M2 byte is 0xFF and every value of the block is NaN. Sign bit = (x < 0): -0.0 -> 0x0,
    a negative value that rounds to 0 -> 0x8 (decodes to -0.0).
    """
    if len(block) != 64:
        raise ValueError("a HiF4 block has exactly 64 values")
    if elem_rounding not in ("rne", "rna"):
        raise ValueError(elem_rounding)
    xs = [f32_input(float(v)) for v in block]
    block_nan = not all(math.isfinite(v) for v in xs)
    xf = [v if math.isfinite(v) else 0.0 for v in xs]
    mag = [abs(v) for v in xf]
    mc = [max(mag[4 * k:4 * k + 4]) for k in range(16)]  # subgroup k = 2*group + half
    mb = [max(mag[8 * g:8 * g + 8]) for g in range(8)]
    ma = max(mag)

    sf = bf16_rne(f32(ma * BF16_ONE_SEVENTH))
    sf = min(max(sf, 2.0 ** -48), 49152.0)  # an all-zero block lands on 2^-48, byte 0x00
    e = _floor_log2(Fraction(sf))
    q = _round_int(Fraction(sf) * Fraction(2) ** (2 - e), "rne")  # in 4..8; 8 carries
    s1 = q * 2.0 ** (e - 2)
    e6m2 = 0xFF if block_nan else (e + 48) * 4 + (q - 4)
    r = bf16_rne(f32(1.0 / s1))

    e1_8 = [1 if f32(mb[g] * r) >= 4 else 0 for g in range(8)]
    e1_16 = [1 if f32(f32(mc[k] * r) * 2.0 ** -e1_8[k // 2]) >= 2 else 0 for k in range(16)]

    values, codes = [], []
    for i in range(64):
        de = e1_8[i // 8] + e1_16[i // 4]
        v = bf16_rne(f32(f32(mag[i] * r) * 2.0 ** -de))
        c = min(7, _round_int(4 * Fraction(v), elem_rounding))
        s = 1 if xf[i] < 0 else 0
        codes.append(s * 8 + c)
        values.append(NAN if block_nan else (-1.0 if s else 1.0) * s1 * 2.0 ** de * (c / 4))

    e1_8_byte = sum(bit << (7 - g) for g, bit in enumerate(e1_8))  # group 0 at bit 7
    e1_16_bytes = tuple(sum(bit << (7 - j) for j, bit in enumerate(e1_16[8 * h:8 * h + 8]))
                        for h in range(2))
    return dict(values=values, e6m2=e6m2, e1_8=e1_8_byte, e1_16=e1_16_bytes, elem_codes=codes,
                scale_bytes=bytes([e6m2, e1_8_byte, *e1_16_bytes]))


def hif4_pack_elements(codes: list[int]) -> bytes:
    """Two nibbles per byte, even element in the low nibble (amct ``hif4_pack``, FORMATS.md 2.2)."""
    if len(codes) % 2 or any(not 0 <= c <= 15 for c in codes):
        raise ValueError("need an even number of 4-bit codes")
    return bytes(codes[j] | (codes[j + 1] << 4) for j in range(0, len(codes), 2))


if __name__ == "__main__":
    # HiF4 worked example (FORMATS.md 2.2): max 1.0 -> S1 = 0.15625, r = 6.40625, 1.0 -> c = 6.
    blk = [1.0] + [0.01 * k for k in range(1, 64)]
    blk[5] = -0.0
    out = hif4_reference(blk)
    s1 = out["values"][0] / 4 / 1.5
    print("HiF4 bf16(1/7) =", BF16_ONE_SEVENTH, " sf =", bf16_rne(f32(1.0 * BF16_ONE_SEVENTH)),
          " r =", bf16_rne(f32(1 / 0.15625)))
    print("HiF4 example: value(1.0) =", out["values"][0], " code", out["elem_codes"][0],
          " S1 =", s1, " scale bytes", out["scale_bytes"].hex())
    assert out["values"][0] == 0.9375 and out["elem_codes"][0] == 6 and s1 == 0.15625
    assert out["e1_8"] >> 7 == 1 and out["e1_16"][0] >> 7 == 1
    print("HiF4 example codes[:8] =", out["elem_codes"][:8], " packed:", hif4_pack_elements(out["elem_codes"])[:4].hex())
    z = hif4_reference([0.0] * 64)
    print("HiF4 all-zero scale bytes:", z["scale_bytes"].hex(), " values sum", sum(z["values"]))
    n = hif4_reference([float("inf")] + [0.5] * 63)
    print("HiF4 Inf block: scale bytes", n["scale_bytes"].hex(), " all NaN:", all(math.isnan(v) for v in n["values"]))
    t = [0.625 / 6.40625] + [0.0] * 62 + [1.0]  # r = 6.40625, de = 0: v = 0.625, 4v = 2.5 (tie)
    print("HiF4 tie element: rna code", hif4_reference(t)["elem_codes"][0], " rne code",
          hif4_reference(t, elem_rounding="rne")["elem_codes"][0])

    d = hif4_reference([1.979452133178711] + [0.0] * 63)  # f32 then bf16 hits an E6M2 tie
    print("HiF4 double rounding: sf =", bf16_rne(f32(1.979452133178711 * BF16_ONE_SEVENTH)), "(one rounding:",
          bf16_rne(1.979452133178711 * BF16_ONE_SEVENTH), ") E6M2", hex(d["e6m2"]), "value", d["values"][0])
    assert d["e6m2"] == 0xB8

    # NVFP4: two blocks, the second with a smaller max.
    xs = [((-1) ** k) * (k + 1) * 0.37 for k in range(16)] + [0.001 * (k - 7) for k in range(16)]
    for fos in (False, True):
        res = nvfp4_reference(xs, four_over_six=fos)
        print(f"NVFP4 four_over_six={fos}: tensor_scale={res['tensor_scale']!r} scale_codes="
              f"{[hex(c) for c in res['scale_codes']]}")
        print("  values[:6] =", [round(v, 6) for v in res["values"][:6]], " codes[:6] =", res["elem_codes"][:6])
    res = nvfp4_reference(xs, elem_rounding="rna")
    print("NVFP4 rna values[16:22] =", [round(v, 7) for v in res["values"][16:22]], res["elem_codes"][16:22])
    bad = nvfp4_reference(xs[:16] + [NAN] + xs[17:], tensor_amax=6.0)
    print("NVFP4 NaN in block 1 with tensor_amax: scale_codes", [hex(c) for c in bad["scale_codes"]],
          " block0 finite:", all(math.isfinite(v) for v in bad["values"][:16]),
          " block1 NaN:", all(math.isnan(v) for v in bad["values"][16:]))
