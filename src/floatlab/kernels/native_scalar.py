"""Native scalar rounding of float32 CPU tensors: one integer pass near copy speed.

The compiled kernel (:mod:`floatlab.kernels.scalar`) is general, but inductor's loop for it runs
at 0.2-0.3x of ``dst.copy_(x)`` (e4m3) and 0.13x (hif8). This module rounds float32 into a float
format (``FloatFormat``, ``HiF8Format``) in ``native_scalar.cpp``, on the input's integer bits,
with the decisions of :func:`floatlab.kernels.scalar._round_up` and ``_finish``:

* The format enters through a few constants (:func:`plan`): ``qmin``, its spacing exponent at
  the bottom of its range, and per float32 exponent field ``f`` the number of significand bits
  it drops, ``d = qe(e) - unit`` (``qe`` the format's own ``quantum_exponent``), given by a
  formula per kind (IEEE-style minifloats: one ``d`` from the smallest normal up and a slope
  below; HiF8: its tapered widths). :func:`plan` checks the formula against ``quantum_exponent``
  on all 256 fields; a format it does not match keeps the compiled kernel. At or above
  ``2^qmin`` (``1 <= d <= 23``) rounding is integer arithmetic on the bits themselves (a carry
  runs into the exponent field, which is the next binade's value exactly); below, the result
  is 0 or ``2^qmin``. No table lookups (vector gathers are slow on these CPUs), no branches.
* Modes: ``rne``, ``rna``, ``rnz``; ``sr`` (exact, or ``sr_bits``) and ``sr_half`` with the
  in-kernel hash of :mod:`floatlab.kernels.rng` (no generator: the compiled kernel's very draws)
  or with the plain path's own draws passed in (a generator: ``torch.rand``/``torch.randint``
  taken by :func:`floatlab.kernels.dispatch.draws`, same calls, same order).
* Overflow, saturation, Inf, NaN (``0x7FC00000`` with the input's sign) and the sign follow
  ``_finish`` for these modes; signed formats with a zero and a symmetric range only.

The same pass also writes codes instead of values (:func:`encode_into`, what
:func:`floatlab.encode` runs: the code read off the rounded bits, 4-bit codes packed two per byte,
float32, bfloat16 or float16 inputs; :func:`code_spec` checks the mapping on every value of the
format against the plain encoder first), and decodes codes by a table gather
(:func:`decode_table_into`) or fp16/bf16 codes on their bits (:func:`decode_half_into`).

Built on first use like :mod:`floatlab.kernels.native` (the compiler torch.compile uses, into
``$FLOATLAB_CACHE/native``); run in ``torch.get_num_threads()`` threads over slices of the
tensor. Where it cannot be built or ``FLOATLAB_NATIVE=0``, :func:`available` is False and the
dispatcher keeps the compiled (or plain) path, with one warning when a compiler failed.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from floatlab.formats.base import Overflow
from floatlab.formats.floating import FloatFormat
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.kernels import native
from floatlab.plain.packing import pack
from floatlab.plain.scalar import quantize_to_float64
from floatlab.rounding import RoundingMode as M

SOURCE = Path(__file__).with_name("native_scalar.cpp")
FLAGS = (*native.FLAGS, "-fno-trapping-math", "-mprefer-vector-width=512")  # blends; no value changes
CHUNK = 64                       # elements per slice unit (native._parallel gives a thread 2048+)
_MODES = {M.RNE: 0, M.RNA: 1, M.RNZ: 2, M.SR: 3, M.SR_HALF: 4}
_SR_BITS, _HASH, _REPLAY = 5, 1, 2
_lock = threading.Lock()
_state: dict[str, object] = {}


_P, _I, _U, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_int64
_SIGNATURES = {                  # name -> (argtypes, restype)
    "floatlab_round_f32": ([_P, _P, _L, _L, _P, _I, _I, _I] + [_U] * 6 + [_I] * 4 + [ctypes.c_uint64],
                           None),
    "floatlab_encode": ([_P, _I, _P, _I, _L, _L, _P, _I, _I] + [_U] * 6 + [_I] * 4 + [_U] * 3, _I),
    "floatlab_decode_table": ([_P, _P, _L, _P, _I, _I], None),
    "floatlab_decode_rows": ([_P, _P, _L, _L, _P, _P, _I, _I], None),
    "floatlab_decode_half": ([_P, _P, _L, _I], None),
}


def library() -> ctypes.CDLL | None:
    """The loaded library (built on first use), or None where it is unavailable."""
    return native.loaded_once(_state, _lock, lambda: native.build_and_load(
        SOURCE, "floatlab_scalar", FLAGS, "native scalar kernel", _SIGNATURES, 7))


def available() -> bool:
    return library() is not None


_IEEE, _HIF8 = 0, 1


@dataclass(frozen=True)
class NativePlan:
    """The constants of one (format, mode, saturation, sr_bits, draws) case."""

    kind: int                 # 0 IEEE-style, 1 HiF8 (the formula for d)
    mode: int
    rng: int                  # 0 deterministic, 1 hash (seed), 2 replay (the plain path's draws)
    max_bits: int
    ovf_bits: int
    inf_bits: int
    tiny_bits: int            # 2^qmin
    half_bits: int            # 2^(qmin - 1)
    sub_bits: int             # IEEE: the smallest normal
    qs: int                   # qmin + 150
    dn: int                   # IEEE: d from the smallest normal up
    neg_zero: bool
    sr_bits: int


def _bits(v: float) -> int:
    return int(torch.tensor(v, dtype=torch.float32).view(torch.int32)) & 0xFFFFFFFF


def _exact_f32(v: float) -> bool:
    return math.isfinite(v) and float(torch.tensor(v, dtype=torch.float32)) == v


@lru_cache(maxsize=512)
def plan(fmt, mode: M, saturate: bool, sr_bits: int | None, rng: str) -> NativePlan | None:
    """The native plan for float32 inputs, or None where this kernel does not apply (then the
    compiled kernel serves the call). ``rng`` as :attr:`floatlab.kernels.scalar.Plan.rng`."""
    if not isinstance(fmt, (FloatFormat, HiF8Format)) or mode not in _MODES:
        return None
    if not (fmt.signed and fmt.has_zero) or float(fmt.max_value) != float(fmt.max_negative):
        return None
    if not _exact_f32(float(fmt.max_value)):
        return None
    code = _MODES[mode]
    if mode is M.SR and sr_bits is not None:
        if rng == "hash" and sr_bits > 32:      # the compiled kernel draws 62-bit words there
            return None
        code = _SR_BITS
    shape = _shape(fmt)
    if shape is None:
        return None
    kind, qmin, sub_e, dn = shape
    max_bits = _bits(float(fmt.max_value))
    nan, inf = 0x7FC00000, 0x7F800000
    ovf = {Overflow.INF: inf, Overflow.NAN: nan}.get(fmt.overflow, max_bits)
    if saturate:
        ovf = inf_out = max_bits
    else:
        inf_out = inf if fmt.has_inf else ovf
    rng_code = {"none": 0, "hash": _HASH, "replay": _REPLAY}[rng]
    return NativePlan(kind, code, rng_code, max_bits, ovf, inf_out, _bits(2.0 ** qmin),
                      _bits(2.0 ** (qmin - 1)), _bits(2.0 ** sub_e), qmin + 150, dn,
                      bool(fmt.neg_zero), int(sr_bits or 0))


def _formula(kind: int, f: torch.Tensor, qmin: int, sub_e: int, dn: int) -> torch.Tensor:
    """``d`` per exponent field as ``native_scalar.cpp``'s ``dropped`` computes it (fields at or
    above ``2^qmin``; a field's smallest value stands for the IEEE test ``a < 2^sub_e``)."""
    if kind == _IEEE:
        return torch.where(f - 127 < sub_e, qmin + 150 - torch.clamp(f, min=1), torch.full_like(f, dn))
    e = f - 127
    d = 20 + (e.abs() > 3).long() + (e.abs() > 7).long()
    return torch.where(e < -15, torch.full_like(f, 23), d)


@lru_cache(maxsize=256)
def _shape(fmt) -> tuple[int, int, int, int] | None:
    """``(kind, qmin, sub_e, dn)`` whose formula gives ``fmt``'s own spacing on every float32
    exponent field (checked here, field by field), or None."""
    sub = fmt.quantum_exponent(torch.arange(-149, -126, dtype=torch.int64))  # f = 0's binades
    if not bool((sub == sub[0]).all()):
        return None
    qmin = int(sub[0])
    if not -149 <= qmin <= 126:
        return None
    f = torch.arange(1, 255, dtype=torch.int64)
    qe = fmt.quantum_exponent(f - 127)
    below = f - 127 < qmin                       # binades below 2^qmin: 0 or 2^qmin only
    if not bool((qe[below] == qmin).all()):
        return None
    d = qe - (f - 150)
    fields = torch.cat([torch.zeros(1, dtype=torch.int64), f])
    want = torch.cat([torch.tensor([qmin + 149]), d])
    keep = torch.cat([torch.tensor([qmin < -126]), ~below])       # fields the formula serves
    if isinstance(fmt, HiF8Format):
        kind, sub_e, dn = _HIF8, 0, 0
    else:
        kind, sub_e, dn = _IEEE, int(fmt.emin), 23 - int(fmt.mbits)
    got = _formula(kind, fields, qmin, sub_e, dn)
    ok = (got[keep] == want[keep]).all() and (want[keep] >= 1).all() and (want[keep] <= 23).all()
    return (kind, qmin, sub_e, dn) if bool(ok) else None


def round_into(x: torch.Tensor, out: torch.Tensor, p: NativePlan, rnd: torch.Tensor | None) -> None:
    """Write ``x`` rounded by ``p`` into ``out``: both contiguous float32 CPU tensors of one
    shape; ``rnd`` the draws (:func:`floatlab.kernels.dispatch.draws`: the plain path's, one per
    element in row-major order, a 0-d int64 seed for the hash, or None)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native scalar kernel is not available (check available())")
    n = x.numel()
    if n == 0:
        return
    seed, draws, step = 0, None, 0
    if p.rng == _HASH:
        seed = int(rnd) & 0xFFFFFFFFFFFFFFFF
    elif p.rng == _REPLAY:
        draws = rnd.contiguous()
        if draws.numel() != n:
            raise ValueError("one draw per element is needed")
        step = draws.element_size()
    px, py = x.data_ptr(), out.data_ptr()
    pd = draws.data_ptr() if draws is not None else None
    consts = (p.kind, p.mode, p.rng, p.max_bits, p.ovf_bits, p.inf_bits, p.tiny_bits,
              p.half_bits, p.sub_bits, p.qs, p.dn, int(p.neg_zero), p.sr_bits, seed)

    def chunk(s, c):
        start = CHUNK * s
        return (px + 4 * start, py + 4 * start, min(CHUNK * c, n - start), start,
                None if pd is None else pd + step * start, *consts)
    native._parallel(lib.floatlab_round_f32, -(-n // CHUNK), chunk)


# ---- codes (encode) and values of codes (decode) --------------------------------------------
_IN_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_OUT_KINDS = {8: 0, 16: 1, 4: 2, 6: 3}
_NO_NAN = 0x10000             # above every code: the kernel reports it (a NaN to refuse)


@dataclass(frozen=True)
class CodeSpec:
    """How ``native_scalar.cpp``'s ``code_of`` turns a rounded value into a code of the format."""

    bits: int                 # 8, 16, or 4/6 (packed: floatlab.plain.packing's bit stream)
    offset: int               # IEEE: (127 - bias) << mbits
    inf_code: int             # IEEE: the magnitude code of Inf (0 where the format has none)
    nan_code: int             # the NaN code (_NO_NAN where the format has none: refused)
    has_nan: bool


def code_spec(fmt) -> CodeSpec | None:
    """The code constants of ``fmt`` where the native kernel's mapping gives the plain encoder's
    code for every value of the format (and its NaN, Inf, -0 and overflow: checked here once per
    format, against ``floatlab.encode(..., backend="plain")``), else None."""
    if not available():
        return None
    return _code_spec(fmt)


@lru_cache(maxsize=256)
def _code_spec(fmt) -> CodeSpec | None:
    if plan(fmt, M.RNE, False, None, "none") is None or fmt.bits not in _OUT_KINDS:
        return None
    if isinstance(fmt, HiF8Format):
        cs = CodeSpec(8, 0, 0, int(fmt.nan_code), True)
    else:
        cs = CodeSpec(fmt.bits, (127 - fmt.bias) << fmt.mbits,
                      int(fmt.inf_code) if fmt.has_inf else 0,
                      int(fmt.nan_code) if fmt.has_nan else _NO_NAN, bool(fmt.has_nan))
    return cs if _mapping_matches(fmt, cs) else None


def _mapping_matches(fmt, cs: CodeSpec) -> bool:
    """Every code's value (and the specials) encoded natively equals the plain encoder's codes
    (``floatlab.encode(..., backend="plain")``'s steps: the float64 rounding, the format's code
    map, :func:`floatlab.plain.packing.pack`; written out here, as kernels sit below the entry
    points)."""
    vals = fmt.decode(torch.arange(2 ** fmt.bits, dtype=torch.int64)).to(torch.float32)
    inf = float("inf")
    extra = [0.0, -0.0, inf, -inf, 2.0 * float(fmt.max_value), -2.0 * float(fmt.max_value)]
    x = torch.cat([vals, torch.tensor(extra + ([float("nan")] if fmt.has_nan else []))])
    if not fmt.has_nan:
        x = x[~torch.isnan(x)]
    x = x[: x.numel() // 2 * 2]
    for saturate in (False, True):
        q = quantize_to_float64(x, fmt, M.RNE, saturate, None, None)
        if not fmt.has_nan and bool(torch.isnan(q).any()):
            return False                   # the plain encoder refuses it: no code to compare
        want = pack(fmt.encode(q).to(fmt.code_dtype), fmt.bits)
        got = torch.empty_like(want)
        p = plan(fmt, M.RNE, saturate, None, "none")
        if p is None:
            return False
        if encode_into(x, got, p, cs, None) or not torch.equal(got, want):
            return False
    return True


def encoded_size(numel: int, bits: int) -> int:
    """Entries of the flat code storage (``floatlab.plain.packing.pack``'s length)."""
    return (numel * bits + 7) // 8 if bits < 8 else numel


def encode_into(x: torch.Tensor, dst: torch.Tensor, p: NativePlan, cs: CodeSpec,
                rnd: torch.Tensor | None) -> bool:
    """Write the codes of ``x`` rounded by ``p`` into ``dst`` (contiguous, uint8 for 4/6/8-bit
    codes, 4/6-bit ones packed as :func:`floatlab.plain.packing.pack`, int16 for 16-bit codes; of
    :func:`encoded_size` entries). ``x`` contiguous float32, bfloat16 or float16 on the CPU;
    ``rnd`` the plain path's draws (one per element) or None (``p.rng`` must not be the hash).
    Returns whether a NaN was produced in a format without NaN (its codes there are meaningless:
    the caller refuses the input, as the plain path)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native scalar kernel is not available (check available())")
    if p.rng == _HASH:
        raise ValueError("encode replays the plain path's draws: the hash plan is not served")
    n = x.numel()
    if n == 0:
        return False
    draws, step = None, 0
    if p.rng == _REPLAY:
        draws = rnd.reshape(-1).contiguous()
        if draws.numel() != n or draws.element_size() != 8:
            raise ValueError("one 8-byte draw per element is needed")
        step = 8
    in_kind, out_kind = _IN_KINDS[x.dtype], _OUT_KINDS[cs.bits]
    px, py, esize = x.data_ptr(), dst.data_ptr(), x.element_size()
    pd = draws.data_ptr() if draws is not None else None
    consts = (p.kind, p.mode, p.max_bits, p.ovf_bits, p.inf_bits, p.tiny_bits, p.half_bits,
              p.sub_bits, p.qs, p.dn, int(p.neg_zero), p.sr_bits, cs.offset, cs.inf_code,
              cs.nan_code)

    def chunk(s, c):
        start = CHUNK * s                       # packed slices start on a byte
        out = start * cs.bits // 8 if cs.bits < 8 else start * dst.element_size()
        return (px + esize * start, in_kind, py + out, out_kind, min(CHUNK * c, n - start), start,
                None if pd is None else pd + step * start, *consts)
    return native._parallel(lib.floatlab_encode, -(-n // CHUNK), chunk)


def decode_table_into(data: torch.Tensor, out: torch.Tensor, table: torch.Tensor, bits: int) -> None:
    """``out[i] = table[code i]`` for the ``out.numel()`` codes in ``data`` (uint8: 8-bit codes
    one per byte, 4/6-bit ones packed as :func:`floatlab.plain.packing.pack`); ``out`` and
    ``table`` of one dtype (2, 4 or 8 bytes), all contiguous CPU tensors."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native scalar kernel is not available (check available())")
    n = out.numel()
    if n == 0:
        return
    pc, py, pt, es = data.data_ptr(), out.data_ptr(), table.data_ptr(), out.element_size()
    def chunk(s, c):
        start = CHUNK * s
        return (pc + start * bits // 8, py + es * start, min(CHUNK * c, n - start), pt, es, bits)
    native._parallel(lib.floatlab_decode_table, -(-n // CHUNK), chunk)


def decode_half_into(data: torch.Tensor, out: torch.Tensor, fp16: bool) -> None:
    """float32 values of 16-bit fp16 (``fp16``) or bf16 codes, NaN as ``0x7FC00000``."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native scalar kernel is not available (check available())")
    n = out.numel()
    if n == 0:
        return
    pc, py = data.data_ptr(), out.data_ptr()
    native._parallel(lib.floatlab_decode_half, -(-n // CHUNK),
                     lambda s, c: (pc + 2 * CHUNK * s, py + 4 * CHUNK * s,
                                   min(CHUNK * c, n - CHUNK * s), int(fp16)))


def decode_rows_into(data: torch.Tensor, out: torch.Tensor, table: torch.Tensor,
                     base: torch.Tensor, bits: int) -> None:
    """Block decode: ``out`` (rows, len) with ``out[r, j] = table[base[r] + code(r, j)]``, the
    codes in ``data`` (uint8, 8-bit codes or 4-bit ones packed two per byte, row-major; ``len``
    even for 4 bits), ``base`` int32 (rows,), ``table`` of ``out``'s dtype; contiguous CPU."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native scalar kernel is not available (check available())")
    rows, length = out.shape
    if out.numel() == 0:
        return
    pc, py, pb, pt, es = data.data_ptr(), out.data_ptr(), base.data_ptr(), table.data_ptr(), out.element_size()
    per_unit = max(1, CHUNK // length)            # rows per slice unit: about CHUNK elements

    def chunk(s, c):
        r0 = s * per_unit
        nr = min(c * per_unit, rows - r0)
        return (pc + r0 * length * bits // 8, py + es * r0 * length, nr, length, pb + 4 * r0, pt, es, bits)
    native._parallel(lib.floatlab_decode_rows, -(-rows // per_unit), chunk)
