"""Rounding one tensor into one scalar format and mode: the rounding step of every emulated op.

:class:`Rounder` is ``floatlab.quantize`` with its arguments bound, plus two things the numerical
methods need:

* **A native shortcut** where torch's own cast *is* the same function (tested equal bit for bit
  against ``floatlab.quantize`` in ``tests/test_emulate.py``): round-to-nearest-even into fp16,
  bf16, e5m2, e4m3fnuz, e5m2fnuz and fp32, and into e4m3 with ``saturate=True`` (torch's
  float8_e4m3fn cast saturates; for floatlab's default e4m3, whose overflow is NaN, every magnitude
  above 464 is set to NaN after the cast). float64 values are first rounded to float32 with round-to-odd, which
  makes the following round-to-nearest exact (24 >= p + 2 bits); a plain float64 -> float16 cast
  would round twice.
* **Rounding with a residual** (:meth:`Rounder.round_exact`): ``s + e`` where ``s`` is a float64
  result and ``e`` its exact error (TwoSum, TwoProduct). Every grid point and every rounding
  midpoint of a format of at most 26 significant bits is a float64 number, and ``s`` is the
  float64 number nearest ``s + e``, so no boundary lies strictly between them: the rounding of
  ``s`` is the rounding of ``s + e`` except where ``s`` is itself a boundary and ``e != 0`` - a
  midpoint for the round-to-nearest modes (``(1 + 2^-11) + 2^-80`` is the fp16 midpoint
  ``1 + 2^-11`` in float64; the exact sum rounds up), a grid point for the directed and
  stochastic ones. Those elements are decided again from the side ``e`` lies on (stochastic: with
  probability ``|e| / gap``).

``"fp64"`` (also ``"float64"``, ``"double"``) names IEEE double: rounding into it is the identity
on every tensor torch holds.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from floatlab.formats.base import ScalarFormat
from floatlab.formats.block import BlockFormat
from floatlab.formats.floating import FloatFormat
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.formats.registry import FP64, FP64_NAMES, get_format
from floatlab.kernels.dispatch import COMPILE_MIN_NUMEL
from floatlab.rounding import RoundingMode, check_flag, check_generator, resolve_rounding

from . import lut, scan

_FP64_NAMES = (*FP64_NAMES, "e11m52")     # the emulation's name for e11m52 too

# (canonical spelling, saturate) -> torch dtype whose RNE cast from float32 equals floatlab.quantize
_NATIVE = {
    ("e8m23", False): torch.float32,
    ("e5m10", False): torch.float16,
    ("e8m7", False): torch.bfloat16,
    ("e5m2", False): torch.float8_e5m2,
    ("e4m3fnuz", False): torch.float8_e4m3fnuz,
    ("e5m2fnuz", False): torch.float8_e5m2fnuz,
    ("e4m3fn", True): torch.float8_e4m3fn,
    ("e4m3fn", False): torch.float8_e4m3fn,   # torch saturates: NaN beyond 464 is set after the cast
}
# formats whose own overflow is NaN while torch's cast saturates: magnitudes above this round to
# the overflow slot (464 is the midpoint of 448 and 480, and ties go to the even 448)
_NAN_ABOVE = {("e4m3fn", False): 464.0}
# torch's float8 e4m3 casts are scalar loops: from floatlab's compile threshold on, quantize's
# compiled kernel is faster (measured: 2^18 values 1.8 ms native, 0.7 ms quantize)
_NATIVE_MAX_NUMEL = {torch.float8_e4m3fn: COMPILE_MIN_NUMEL, torch.float8_e4m3fnuz: COMPILE_MIN_NUMEL}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LUT_DTYPES = (torch.float32, torch.float64)


def resolve_format(fmt) -> ScalarFormat:
    """The scalar format object for a name or object; ``"fp64"`` is IEEE double.

    Raises:
        ValueError: an unknown name (the message lists the closest ones).
        TypeError: a block format (these round whole blocks, not single results).
    """
    if isinstance(fmt, str) and fmt.strip().lower() in _FP64_NAMES:
        return FP64
    spec = get_format(fmt)
    if isinstance(spec, BlockFormat) or not isinstance(spec, ScalarFormat):
        raise TypeError(f"{getattr(spec, 'name', spec)!r} is a block format: emulated arithmetic "
                        "rounds every result to a scalar format (fp16, bf16, e4m3, hif8, q3.4, ...); "
                        "block formats quantize whole tensors (floatlab.quantize, floatlab.nn)")
    return spec


def is_fp64(spec: ScalarFormat) -> bool:
    """True for IEEE double (every float64 value is representable: rounding is the identity)."""
    return isinstance(spec, FloatFormat) and spec.spelled() == "e11m52"


def significand_bits(spec: ScalarFormat) -> int | None:
    """Significant bits ``p`` of a floating format (implicit bit included); None for fixed point."""
    if isinstance(spec, FloatFormat):
        return spec.mbits + 1
    if isinstance(spec, HiF8Format):
        return 4
    return None


@lru_cache(maxsize=256)
def holds_format(dtype: torch.dtype, spec: ScalarFormat) -> bool:
    """True when every finite value of ``spec`` is exactly a value of the torch ``dtype``."""
    if dtype is torch.float64 or is_fp64(spec):
        return dtype is torch.float64 or not is_fp64(spec)
    fi = torch.finfo(dtype)
    dtype_p = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}[dtype]
    smallest = fi.smallest_normal * fi.eps  # the smallest subnormal of dtype
    if spec.max_value > fi.max or spec.smallest_positive < smallest:
        return False
    if spec.bits <= 16:  # decide by every code
        v = spec.decode(torch.arange(2 ** spec.bits, dtype=torch.int64))
        v = v[torch.isfinite(v)]
        return bool((v.to(dtype).to(torch.float64) == v).all())
    p = significand_bits(spec)
    return p is not None and p <= dtype_p and spec.smallest_positive >= smallest


def round_to_odd_float32(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 with round-to-odd (an inexact result gets an odd last bit).

    Rounding this result to nearest into a format of at most 22 significant bits equals rounding
    ``x`` to nearest directly (round-to-odd keeps the sticky information; 24 >= p + 2).
    """
    if x.device.type == "cpu":
        native = scan.round_to_odd(x)                # one native loop (built on first use)
        if native is not None:
            return native
        if x.numel() <= _NUMPY_MAX_NUMEL:
            return _round_to_odd_float32_numpy(x)
    r = x.to(torch.float32)
    back = r.to(torch.float64)
    inexact = back != x
    # RNE went up in magnitude (|back| > |x|): step the bit pattern back toward zero
    toward_zero = inexact & ((back > x) ^ (x < 0))
    bits = r.view(torch.int32) - toward_zero.to(torch.int32)
    return (bits | inexact.to(torch.int32)).view(torch.float32)


_NUMPY_MAX_NUMEL = 1 << 16   # small tensors: NumPy's per-call cost is a fraction of torch's


def _round_to_odd_float32_numpy(x: torch.Tensor) -> torch.Tensor:
    """:func:`round_to_odd_float32`, the same operations on a NumPy view of a CPU tensor."""
    v = x.detach().numpy()
    with np.errstate(all="ignore"):       # beyond float32's range: inf, as torch's cast
        r = v.astype(np.float32)
        back = r.astype(np.float64)
        inexact = back != v
        toward_zero = inexact & ((back > v) ^ (v < 0))
    bits = r.view(np.int32) - toward_zero.astype(np.int32)
    return torch.from_numpy(np.asarray(bits | inexact.astype(np.int32)).view(np.float32))


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = fl(a + b)`` and its exact error ``e`` (Knuth's TwoSum): ``a + b == s + e`` exactly.

    Where ``s`` is not finite, ``e`` is 0.
    """
    s = a + b
    bp = s - a
    e = (a - (s - bp)) + (b - bp)
    return s, torch.where(torch.isfinite(s) & torch.isfinite(e), e, torch.zeros_like(e))


_SPLITTER = 134217729.0  # 2^27 + 1 (Veltkamp)


def two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``p = fl(a * b)`` and its exact error ``e`` (Dekker's TwoProduct, no FMA needed), float64.

    Exact unless a partial product overflows or underflows (``|a|, |b| < 2^995`` and products above
    ``2^-969``); where the error term is not finite, ``e`` is 0.
    """
    p = a * b

    def split(v):
        c = _SPLITTER * v
        hi = c - (c - v)
        return hi, v - hi

    ah, al = split(a)
    bh, bl = split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    ok = torch.isfinite(p) & torch.isfinite(e)
    return p, torch.where(ok, e, torch.zeros_like(e))


class Rounder:
    """Round tensors into ``fmt`` with one mode, generator and overflow rule.

    Args:
        fmt: a scalar format name or object (``"fp16"``, ``"bf16"``, ``"e4m3"``, ``"hif8"``,
            ``"q3.4"``, ``"e6m9"``, ``"fp64"``, ...).
        rounding: a :class:`~floatlab.RoundingMode` or its name; ``None`` = the format's default.
        saturate: clamp overflow to +-max (``None``: the format's own overflow rule).
        generator: ``torch.Generator`` for the stochastic modes; every call draws from it in
            order, so a program replayed with an equally seeded generator rounds identically.
        sr_bits: random bits of ``rounding="sr"`` (``None``: exact probability).
        backend: passed to :func:`floatlab.quantize` (``None``: its default).

    Calling it on a floating tensor returns a tensor of the same dtype and shape holding values
    of ``fmt`` (the dtype must hold them: see :func:`holds_format`). Non-floating tensors are
    returned unchanged.

    Raises:
        ValueError / TypeError: as :func:`floatlab.quantize` for an unknown format or mode, and
            TypeError for a block format.
    """

    def __init__(self, fmt, rounding=None, *, saturate: bool | None = None,
                 generator: torch.Generator | None = None, sr_bits: int | None = None,
                 backend: str | None = None):
        self.spec = resolve_format(fmt)
        self.mode = resolve_rounding(self.spec, rounding, sr_bits)
        self.saturate = bool(check_flag(saturate, "saturate", optional=True))
        check_generator(generator)
        self.generator = generator
        self.sr_bits = sr_bits
        self.backend = backend
        self.identity = is_fp64(self.spec)
        native, self._nan_above = None, None
        if isinstance(self.spec, FloatFormat) and self.mode is RoundingMode.RNE:
            key = (self.spec.spelled(), self.saturate)
            native, self._nan_above = _NATIVE.get(key), _NAN_ABOVE.get(key)
        self.native = native
        self.p = significand_bits(self.spec)
        # table lookup for float32 tensors (floatlab.emulation.lut): formats of at most 3 mantissa
        # bits without a fast native cast, deterministic modes, the default backend
        self._lut = None
        self._lut_wanted = (native in (None, torch.float8_e4m3fn, torch.float8_e4m3fnuz)
                            and not self.mode.is_stochastic and backend is None
                            and ((isinstance(self.spec, FloatFormat) and self.spec.mbits <= lut.MANTISSA)
                                 or isinstance(self.spec, HiF8Format)))

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        sat = ", saturate=True" if self.saturate else ""
        return f"Rounder({self.spec.name!r}, {self.mode.value!r}{sat})"

    def __call__(self, t: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``t`` rounded into the format, as ``out_dtype`` (default ``t.dtype``; it must hold the
        format's values, or the final cast rounds again)."""
        out_dtype = t.dtype if out_dtype is None else out_dtype
        if not t.is_floating_point() or self.identity:
            return t.to(out_dtype)
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"cannot round a {t.dtype} tensor (float16, bfloat16, float32 and "
                            "float64 are supported)")
        if self._lut_wanted and t.dtype in _LUT_DTYPES and t.device.type == "cpu" and not t.requires_grad:
            table = self._table()
            if table is not None:
                if t.dtype is torch.float64:
                    # round-to-odd keeps whether and on which side of the float32 result the value
                    # lay: every deterministic mode then rounds as it rounds the float64 value
                    # (the format's values and midpoints are float32 numbers of at most 5 bits)
                    t = round_to_odd_float32(t)
                return lut.round_float32(t, table).to(out_dtype)
        if self.native is not None and t.numel() < _NATIVE_MAX_NUMEL.get(self.native, math.inf):
            if t.dtype is self.native:
                return t.to(out_dtype)
            src = t
            if t.dtype is torch.float64 and self.native is not torch.float32:
                t = round_to_odd_float32(t)
            y = t.to(self.native).to(out_dtype)
            if self._nan_above is not None:
                y = torch.where(src.abs() > self._nan_above, torch.full_like(y, float("nan")), y)
            return y
        return self._quantize(t).to(out_dtype)

    def _table(self) -> torch.Tensor | None:
        if self._lut is None:
            from floatlab.kernels.dispatch import resolve_backend
            table = lut.table(self.spec, self.mode, self.saturate) if resolve_backend(None) != "plain" else None
            self._lut = False if table is None else table
        return self._lut if self._lut is not False else None

    def _quantize(self, t: torch.Tensor) -> torch.Tensor:
        from floatlab.ops.api import quantize
        return quantize(t, self.spec, self.mode, self.saturate or None,
                        self.generator if self.mode.is_stochastic else None,
                        self.sr_bits, backend=self.backend, grad="none")

    def round_exact(self, s: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        """The rounding of the exact value ``s + e`` (float64 ``s``, exact error ``e``).

        ``e`` comes from :func:`two_sum` or :func:`two_product` (``None`` or all zeros: ``s`` is
        exact). For the stochastic modes the elements whose ``s`` lies on the grid round away
        from ``s`` with probability ``|e| / gap``; elsewhere the probability is computed from
        ``s`` (off by at most ``2^-(53-p)``).
        """
        y = self(s)
        if e is None or self.identity or self.mode is RoundingMode.HYBRID:
            return y
        nearest = self.mode.is_nearest
        if nearest:
            # a boundary of round-to-nearest (a midpoint, or the overflow threshold) is not a value
            # of the format and has at most p + 1 significant bits: in float64 (normal range) its
            # low 52 - p significand bits are zero - a cheap superset, decided exactly below
            fix = (e != 0) & (y != s)
            if self.p is not None and self.p <= 52 and s.dtype is torch.float64:
                low = (s.view(torch.int64) & ((1 << (52 - self.p)) - 1)) == 0
                fix &= low | (s.abs() < 2.0 ** -1022)
        else:
            fix = (y == s) & (e != 0)
        if not bool(fix.any()):
            return y
        idx = fix.nonzero(as_tuple=True)
        s_f, e_f = s[idx], e[idx]
        toward = torch.where(e_f > 0, torch.full_like(s_f, float("inf")), torch.full_like(s_f, -float("inf")))
        nudged = torch.nextafter(s_f, toward)   # strictly between s and its grid neighbour
        y = y.clone()
        if nearest:
            # s is a rounding boundary (a midpoint, or the overflow threshold) exactly when its
            # two float64 neighbours round apart and s is not a value of the format
            inf = torch.full_like(s_f, float("inf"))
            boundary = self(torch.nextafter(s_f, -inf)) != self(torch.nextafter(s_f, inf))
            y[idx] = torch.where(boundary, self(nudged).to(y.dtype), y[idx])
            return y
        if self.mode in (RoundingMode.SR, RoundingMode.SR_HALF):
            up = Rounder(self.spec, RoundingMode.RUP, saturate=self.saturate)
            down = Rounder(self.spec, RoundingMode.RDN, saturate=self.saturate)
            neighbour = torch.where(e_f > 0, up(nudged), down(nudged))
            gap = (neighbour - s_f).abs()
            # past the largest value the next grid point is the overflow boundary
            beyond = torch.full_like(gap, self.spec.overflow_boundary - self.spec.max_value)
            gap = torch.where(torch.isfinite(gap) & (gap > 0), gap, beyond)
            prob = e_f.abs() / gap
            if self.mode is RoundingMode.SR_HALF:
                coin = torch.randint(0, 2, s_f.shape, device=s.device, generator=self.generator)
                move = coin == 1
            elif self.sr_bits is None:
                u = torch.rand(s_f.shape, dtype=torch.float64, device=s.device, generator=self.generator)
                move = u < prob
            else:
                scale = float(2 ** self.sr_bits)
                r = torch.randint(0, 2 ** self.sr_bits, s_f.shape, device=s.device, generator=self.generator)
                move = torch.floor(prob * scale) + r.to(torch.float64) >= scale
            y[idx] = torch.where(move, neighbour, s_f).to(y.dtype)
        else:
            y[idx] = self(nudged).to(y.dtype)
        return y
