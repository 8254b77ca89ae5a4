"""The emulation context: a ``TorchDispatchMode`` that rounds every floating result.

PyTorch sends every ATen operation of ordinary code (forward and backward) through the dispatch
mode on top of its mode stack, below autograd, the way ``torch.utils.flop_counter.FlopCounterMode``
counts FLOPs. :class:`Emulation` runs each operation itself, in the working precision, and rounds
its floating outputs with a :class:`~floatlab.emulation.rounding.Rounder`; how depends on the
operation's :class:`~floatlab.emulation.ops.Kind` (table in :mod:`floatlab.emulation`).
"""

from __future__ import annotations

import struct
import threading
import weakref
from collections import Counter
from functools import lru_cache

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from floatlab.formats.floating import FloatFormat
from floatlab.gemm.accumulate import Accumulator

from .accumulate import accumulated_cumsum, accumulated_matmul, accumulated_sum, check_order
from .ops import ACCUMULATED_REDUCTIONS, BASIC, TRANSCENDENTAL, Kind, base_name, classify, functional_variant, is_inplace
from . import scan
from .rounding import Rounder, holds_format, two_product, two_sum

WORKING = ("auto", "float64", "input")
_NUMPY_FLOATS = (torch.float32, torch.float64)
REDUCTIONS = ("result", "accumulator")
FUSED = ("decompose", "result")
LINALG = ("result", "refuse")
_F32_MIN_NORMAL = 2.0 ** -126
_F32_MAX = float(torch.finfo(torch.float32).max)

_local = threading.local()


class EmulationError(RuntimeError):
    """An operation the emulation refuses (``linalg="refuse"``, complex results, a dtype that
    cannot hold the format)."""


def _active() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _choice(value, valid, what):
    if value not in valid:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, valid))}, got {value!r}")
    return value


class _quiet:
    """Run floatlab's own bookkeeping with every dispatch mode below this one switched off (so an
    outer FlopCounterMode or emulation does not see the rounding's internal operations)."""

    def __enter__(self):
        self._ctx = _disable_current_modes() if _get_current_dispatch_mode_stack() else None
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


class Emulation(TorchDispatchMode):
    """Context manager: every floating operation's result rounded to ``fmt``.

    Build it with :func:`floatlab.emulate` (same arguments, documented there). ``counts`` holds,
    per ATen operation name, how many times it ran and how it was treated
    (``"aten.mm.default/accumulated"``); :meth:`report` sums them by treatment.
    """

    def __init__(self, fmt, rounding=None, *, saturate=None, generator=None, sr_bits=None,
                 accumulator=None, order="forward", reductions="result", fused="decompose",
                 linalg="result", working="auto", round_inputs=False, backend=None):
        super().__init__()
        self.rounder = Rounder(fmt, rounding, saturate=saturate, generator=generator,
                               sr_bits=sr_bits, backend=backend)
        self.spec = self.rounder.spec
        self.order = check_order(order)
        self.reductions = _choice(reductions, REDUCTIONS, "reductions")
        self.fused = _choice(fused, FUSED, "fused")
        self.linalg = _choice(linalg, LINALG, "linalg")
        self.working = _choice(working, WORKING, "working")
        if not isinstance(round_inputs, bool):
            raise TypeError(f"round_inputs must be True or False, got {round_inputs!r}")
        self.round_inputs = round_inputs
        acc = Accumulator.parse(accumulator)
        self.accumulator = acc
        if acc is not None:
            acc_gen = generator
            if acc_gen is None and acc.seed is not None:
                acc_gen = torch.Generator().manual_seed(acc.seed)
            self.acc_rounder = Rounder(acc.fmt, acc.rounding, generator=acc_gen, backend=backend)
            self.chunk = acc.chunk
        else:   # reductions="accumulator" without one: recursive summation in the format itself
            self.acc_rounder = self.rounder
            self.chunk = 1
        self.counts: Counter = Counter()
        self._holds: dict = {}
        # results of this mode still unchanged (id -> (weak reference, version)): they hold values
        # of the format, so the double rounding theorem covers float32 arithmetic on them; Python
        # scalars that are values of the format (value -> bool)
        self._rounded: dict = {}
        self._scalars: dict = {}
        p = self.rounder.p
        mode = self.rounder.mode
        # float32 arithmetic with verification (see _verified): round-to-nearest into p <= 11
        # bits for + - * / sqrt; every deterministic mode for transcendental functions
        # Formats laid out like float32 with fewer mantissa bits (bf16, tf32) reach past float32's
        # largest value and below its normal range: they qualify through another argument (see
        # _verified: float32 results on one of their rounding midpoints are redone), when rounding
        # float32's largest finite value gives what infinity gives (then a float32 result that
        # overflowed rounds like the exact one); float32 infinities of library functions are redone
        fits = self.spec.overflow_boundary <= _F32_MAX
        self._midpoint_bits = None if fits else _float32_layout_midpoint(self.spec)
        self._fast32 = (p is not None and 2 * p + 2 <= 24 and not mode.is_stochastic
                        and not self.rounder.identity
                        and (fits or (self._midpoint_bits is not None
                                      and _overflow_agrees(self.spec, mode, self.rounder.saturate))))
        # the fast lane is working="auto" itself (float32 with the checks of _verified)
        self._lane = self._fast32 and self.working == "auto"   # "input"/"float64" mean what they say
        self._nearest = mode.is_nearest
        self._inf_redo = not mode.is_nearest or not fits
        self._grid = None     # scan.grid_bits of the rounder (0: unavailable), found on first use
        if self._fast32:      # see _verified: candidates for the format's rounding midpoints
            self._low_mask = (1 << (23 - p)) - 1
            self._below_f32_normal = self.spec.smallest_positive < 2 * _F32_MIN_NORMAL

    # ---- context management -------------------------------------------------------------
    def __enter__(self):
        _active().append(self)
        try:
            return super().__enter__()
        except BaseException:
            _active().pop()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            stack = _active()
            if stack and stack[-1] is self:
                stack.pop()

    def report(self) -> dict[str, int]:
        """Number of operations per treatment (``rounded``, ``accumulated``, ``decomposed``, ...)."""
        out: Counter = Counter()
        for key, n in self.counts.items():
            out[key.rsplit("/", 1)[1]] += n
        return dict(out)

    def __repr__(self) -> str:
        acc = f", accumulator={str(self.accumulator)!r}" if self.accumulator else ""
        return f"Emulation({self.spec.name!r}, {self.rounder.mode.value!r}{acc}, working={self.working!r})"

    # ---- dispatch -----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stack = _active()
        if not stack or stack[-1] is not self:   # an inner emulation is in charge
            return func(*args, **kwargs)
        facts = _facts(func)
        kind = facts.kind
        if kind is Kind.SOURCE:
            return func(*args, **kwargs)
        if kind is Kind.MOVE:
            out = func(*args, **kwargs)
            if facts.name in _MOVES_KEEPING_MARKS and args and all(
                    self._in_format(a) for a in args if isinstance(a, torch.Tensor)):
                for t in _tensors(out):       # values (or views) of a tensor of format values
                    if t.is_floating_point():
                        self._mark(t)
            return out
        if kind is Kind.CONVERT:
            return self._convert(func, args, kwargs)
        if kind is Kind.FUSED:
            if self.fused == "decompose":
                from torch._decomp import decomposition_table
                decomp = decomposition_table.get(func)
                if decomp is not None:
                    self._count(func, "decomposed")
                    with self:
                        return decomp(*args, **kwargs)
            kind = Kind.ELEMENTWISE
        if kind is Kind.ELEMENTWISE and self._lane and not self.round_inputs:
            out = self._fast_lane(func, args, kwargs)
            if out is not NotImplemented:
                return out
        natural = _natural_dtypes(func, args, kwargs)
        if any(d is not None and d.is_complex for d in natural):
            raise EmulationError(f"{func}: complex results are not emulated (floatlab rounds real "
                                 "floating tensors only)")
        if not _floating(natural):
            return func(*args, **kwargs)   # comparisons, indices, integer arithmetic
        if kind is Kind.LINALG and self.linalg == "refuse":
            raise EmulationError(
                f"{func} is a LAPACK operation: floatlab.emulate(..., linalg='refuse') refuses it. "
                "Use linalg='result' to round its outputs once, or floatlab.linalg (LU and "
                "triangular solves with every operation rounded)")
        if kind is Kind.CONTRACTION and self.accumulator is not None:
            return self._with_mutation(func, args, kwargs, self._contract, "accumulated")
        if (kind is Kind.REDUCTION and self.reductions == "accumulator"
                and base_name(func) in ACCUMULATED_REDUCTIONS):
            return self._with_mutation(func, args, kwargs, self._reduce, "accumulated")
        label = {Kind.LINALG: "linalg-result", Kind.CONVOLUTION: "conv-result"}.get(kind, "rounded")
        return self._with_mutation(func, args, kwargs, self._compute, label)

    def _fast_lane(self, func, args, kwargs):
        """The common case without the general machinery: a functional elementwise op on float32
        tensors that :meth:`_path` sends to float32 (NotImplemented otherwise)."""
        facts = _facts(func)
        if facts.mutable or not ((self._nearest and facts.basic) or facts.transcendental):
            return NotImplemented
        for a in args:
            if isinstance(a, torch.Tensor):
                if a.dtype is not torch.float32:
                    return NotImplemented
            elif not (a is None or isinstance(a, (int, float, bool, str))):
                return NotImplemented
        if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            return NotImplemented
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        with _quiet():
            done = self._verified(func, args, kwargs, out)
        if done is None:
            return NotImplemented
        self.counts[facts.rounded] += 1
        self._mark(done)
        return done

    def _mark(self, t: torch.Tensor) -> None:
        """Remember that ``t`` (a result of this mode) holds values of the format until it
        changes: its version counter moves with every in-place write, also through views."""
        key, table = id(t), self._rounded
        table[key] = (weakref.ref(t, lambda _, k=key: table.pop(k, None)), t._version)

    def _in_format(self, a) -> bool:
        """``a`` is known to hold values of the format: an unchanged result of this mode, or a
        Python number the format holds (non-numbers: True, they are not operands)."""
        if isinstance(a, torch.Tensor):
            entry = self._rounded.get(id(a))
            return entry is not None and entry[0]() is a and entry[1] == a._version
        if a is None or isinstance(a, (bool, str)):
            return True
        ok = self._scalars.get(a)
        if ok is None:
            v = float(a)
            ok = v == v and float(self.rounder(torch.tensor(v, dtype=torch.float64))) == v
            if len(self._scalars) < 4096:
                self._scalars[a] = ok
        return ok

    def _count(self, func, how: str) -> None:
        self.counts[_label(func, how)] += 1

    # ---- the treatments -------------------------------------------------------------------
    def _with_mutation(self, func, args, kwargs, compute, label):
        """Run ``compute(func, args, kwargs)`` for functional ops; in-place ops compute their
        functional variant and copy into ``self``; out= variants run as they are and have their
        written outputs rounded in place (in the storage dtype)."""
        if not func._schema.is_mutable:
            out = compute(func, args, kwargs)
            if out is not NotImplemented:
                self._count(func, label)
                return out
            return self._fallback(func, args, kwargs)
        functional = functional_variant(func) if is_inplace(func) else None
        if functional is not None:
            out = compute(functional, args, kwargs)
            if out is NotImplemented:
                return self._fallback(func, args, kwargs)
            target = args[0]
            self._check_dtype(target.dtype)
            with _quiet():
                target.copy_(out)
            self._count(func, label)
            return target
        return self._fallback(func, args, kwargs)

    def _fallback(self, func, args, kwargs):
        """Run as is, then round every floating output (and written argument) in place."""
        if self.round_inputs:
            args, kwargs = self._round_args(args, kwargs)
        out = func(*args, **kwargs)
        with _quiet():
            for t in _written(func, args, kwargs) or _tensors(out):
                if t.is_floating_point():
                    self._check_dtype(t.dtype)
                    t.copy_(self.rounder(t))
        self._count(func, "rounded-in-place")
        return out

    def _convert(self, func, args, kwargs):
        if len(args) == 2 and not kwargs and isinstance(args[0], torch.Tensor) and args[1] is args[0].dtype:
            return func(*args)                      # a conversion to the same dtype: nothing narrows
        src = next((a for a in _flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)), None)
        out = func(*args, **kwargs)
        if src is None or not src.is_floating_point():
            return out
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        narrowing = [t for t in outs if _narrows(src.dtype, t.dtype)]
        if not narrowing:
            return out
        with _quiet():
            for t in narrowing:
                self._check_dtype(t.dtype)
                t.copy_(self.rounder(t))
        self._count(func, "rounded")
        return out

    def _compute(self, func, args, kwargs):
        """Working precision, then every floating output rounded and cast to its natural dtype."""
        if self.round_inputs:
            args, kwargs = self._round_args(args, kwargs)
        flat, spec = _flatten((args, kwargs))
        floats = [a for a in flat if isinstance(a, torch.Tensor) and a.is_floating_point()]
        path = self._path(func, floats)
        if path == "float32-verified":
            out = func(*args, **kwargs)
            with _quiet():
                done = self._verified(func, args, kwargs, out)
            if done is not None:
                self._mark(done)
                return done
            path = "float64"                      # not an elementwise shape: redo it all
        if path == "float64":
            natural = _natural_dtypes(func, args, kwargs)
            with _quiet():
                flat64 = [a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                          for a in flat]
            args64, kwargs64 = _unflatten(flat64, spec)
            out = func(*args64, **kwargs64)
            with _quiet():
                residual = self._residual(func, args64, kwargs64, out)
                return self._marked(self._round_outputs(out, natural, residual))
        out = func(*args, **kwargs)
        with _quiet():
            return self._marked(self._round_outputs(out, None, None))

    def _marked(self, result):
        """``result`` (rounded outputs, held in dtypes that hold the format) with its floating
        tensors marked as values of the format (see :meth:`_mark`)."""
        for t in _tensors(result):
            if t.is_floating_point():
                self._mark(t)
        return result

    def _path(self, func, floats) -> str:
        """``"input"`` (the operands' dtype), ``"float32-verified"`` or ``"float64"``."""
        if not floats or all(a.dtype is torch.float64 for a in floats) or self.working == "input":
            return "input"
        if self.working == "float64" or not all(a.dtype is torch.float32 for a in floats):
            return "float64"
        # auto: float32 where it gives the float64 path's rounding (see _verified)
        if self._fast32 and ((self._nearest and _is_basic(func)) or _is_transcendental(func)):
            return "float32-verified"
        return "float64"

    def _verified(self, func, args, kwargs, out):
        """Round a float32 result where that provably gives the float64 path's answer; redo the
        other elements in float64. None when the op's operands are not elementwise-shaped.

        * ``+ - * / sqrt`` (and the exact ops) round correctly from float32 under
          round-to-nearest into p <= 11 bits (innocuous double rounding, 24 >= 2p + 2), except
          where the float32 result is subnormal (below 2^-126: fewer than 24 bits) - redone.
        * transcendental functions (:data:`~floatlab.emulation.ops.TRANSCENDENTAL`: exp, tanh,
          silu, ...): their float32 versions are accurate to a few float32 ulps; an element is
          kept when every value within 2^-19 (8 to 16 float32 ulps) of its float32 result rounds
          alike, so the exact value rounds alike too: on the CPU, when no multiple of 2^(E - p)
          lies within 32 float32 units of it (:func:`scan.grid`; the format's boundaries are such
          multiples, checked by :func:`scan.grid_bits`), elsewhere when the two values 2^-19
          below and above it round alike; others (and zero, subnormal or non-finite results) are
          redone in float64 - for fp16 about 1.6% of them, for 8-bit formats almost none.
        * selections (relu, abs, maximum, clamp, ... but not neg) of values of the format are
          returned as they are; a result on one of the format's midpoints of ``+ - * /`` with
          operands not in the format is rounded by :meth:`_nudged` without a float64 redo.
        """
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        shape = out.shape
        if any(isinstance(t, torch.Tensor) and t.dim() and t.shape != shape
               and not _broadcasts_to(t.shape, shape) for t in (*args, *kwargs.values())):
            return None
        self._check_dtype(out.dtype)
        r = self.rounder
        facts = _facts(func)
        if facts.basic and (kwargs or not all(isinstance(a, torch.Tensor) or _exact_in_float32(a)
                                              for a in args)):
            return None     # Python floats and alpha would enter float32 arithmetic rounded
        if facts.name in _KEEPS_VALUES and all(self._in_format(a) for a in args):
            return out      # picks among values of the format (or +0): nothing to round
        y = r(out)
        if facts.basic and (facts.name in _SELECTING or all(self._in_format(a) for a in args)):
            # the result is one of the operands (exact), or every operand is a value of the format:
            # the double rounding theorem covers + - * / sqrt (24 >= 2p + 2, Figueroa 1995) where
            # the float32 result is normal; formats reaching below float32's normal range redo
            # float32 subnormal results (fewer than 24 bits there)
            if facts.name in _SELECTING or not self._fast32 or not self._below_f32_normal \
                    or self._midpoint_bits is not None:
                return y
            tiny = out.detach().abs() < _F32_MIN_NORMAL
            if not bool(tiny.any()):
                return y
            return self._redo(func, args, kwargs, out, y, tiny.nonzero(as_tuple=True))
        if facts.basic and self._midpoint_bits is not None:
            # bf16, tf32: the operands need not be values of the format (inputs are not rounded at
            # entry), so the double rounding theorem below does not apply. The float32 result f
            # is the float32 number nearest the exact value v (also where it is subnormal); every
            # rounding midpoint of these formats is a float32 number, so a midpoint between v and f
            # would be a float32 number nearer v: f rounds like v unless f is a midpoint itself,
            # and like the float64 path's result (same argument with 53 bits) - redone there.
            low, half = self._midpoint_bits
            if out.device.type == "cpu" and out.dim():
                return self._redo_at(func, args, kwargs, out, y, scan.bits(out, None, low, half, False))
            idx = _bits_equal(out, low, half)
            if idx is None:
                return y
            return self._redo(func, args, kwargs, out, y, idx)
        elif facts.basic:
            # The operands need not be values of the format (inputs are not rounded at entry), so
            # the double rounding theorem (24 >= 2p + 2, Figueroa 1995) does not cover the first
            # operation: (1 + 2^-11) + 2^-40 is 1 + 2^-11 in float32, a fp16 midpoint, which
            # rounds to 1.0 where the exact sum rounds to 1 + 2^-10. The argument of the branch
            # above holds instead: f (correctly rounded, IEEE 754 section 5.4) rounds like the
            # exact value unless f is a rounding midpoint itself. A midpoint has at most p + 1
            # significant bits (the low 23 - p bits of a normal float32's significand are zero)
            # and is not a value of the format: such elements are redone in float64 (a
            # superset: also values beyond the format's range or resolution; rare). Formats
            # reaching below float32's normal range redo float32 subnormal results too.
            v = out.detach()
            if v.device.type == "cpu" and v.dim():
                pos = scan.bits(v, y, self._low_mask, 0, self._below_f32_normal)
                return self._redo_at(func, args, kwargs, out, y, pos)
            if v.device.type == "cpu":
                o, yv = v.numpy(), y.detach().numpy()
                with np.errstate(all="ignore"):
                    flag = ((o.view(np.int32) & self._low_mask) == 0) & (o != yv)
                    if self._below_f32_normal:
                        flag |= np.abs(o) < _F32_MIN_NORMAL
                return self._redo(func, args, kwargs, out, y, ()) if bool(flag) else y
            redo = ((v.view(torch.int32) & self._low_mask) == 0) & (v != y)
            if self._below_f32_normal:
                redo |= v.abs() < _F32_MIN_NORMAL
        else:
            # rounding is monotone: lo == hi means every value between them (the exact one
            # included) rounds to y. Zero and subnormal results may hide a tiny exact value
            # (exp(-110) > 0); NaN results are redone too (rare); an infinite float32 result
            # matters only to the directed modes (RTZ stops at the largest value).
            if out.device.type == "cpu" and out.dim():
                if self._grid is None:
                    self._grid = scan.grid_bits(r) or 0
                if self._grid:
                    # the float32 error bound 2^-19 |out| is below 2^(E-18) = 32 float32 units
                    # of out's binade: no multiple of 2^(E-p) within 32 units, no boundary of
                    # the format between out and the exact value (scan.grid_bits checked it)
                    pos = scan.grid(out, 23 - self._grid, 32)
                    return self._redo_at(func, args, kwargs, out, y, pos)
            lo, hi = r(out * (1 - 2.0 ** -19)), r(out * (1 + 2.0 ** -19))
            if out.device.type == "cpu":          # the same test on NumPy views (cheaper reductions)
                o, lo, hi = (v.detach().numpy() for v in (out, lo, hi))
                with np.errstate(all="ignore"):
                    a = np.abs(o)
                    flag = (lo != hi) | ~(a >= _F32_MIN_NORMAL)
                    if self._inf_redo:
                        flag |= a == np.inf
                if o.ndim == 0:
                    return self._redo(func, args, kwargs, out, y, ()) if bool(flag) else y
                pos = np.flatnonzero(flag)
                if pos.size == 0:
                    return y
                idx = tuple(torch.from_numpy(i) for i in np.unravel_index(pos, o.shape))
                return self._redo(func, args, kwargs, out, y, idx)
            a = out.abs()
            redo = (lo != hi) | ~(a >= _F32_MIN_NORMAL)
            if self._inf_redo:
                redo |= a == float("inf")
        if not bool(redo.any()):
            return y
        return self._redo(func, args, kwargs, out, y, redo.nonzero(as_tuple=True))

    def _redo_at(self, func, args, kwargs, out, y, pos):
        """``y`` with the elements at the flat positions ``pos`` (NumPy int64) redone: by
        :meth:`_nudged` where it applies, else in float64 (:meth:`_redo`)."""
        if pos.size == 0:
            return y
        done = self._nudged(func, args, out, y, pos)
        if done is None and not kwargs and len(args) == 1 and _flat_like(args[0], out) and y.is_contiguous():
            # one float32 operand of the result's layout (exp(x), tanh(x), ...): gather, redo in
            # float64 and round, on flat positions (what _redo does, without its general bookkeeping)
            with np.errstate(all="ignore"):
                x64 = torch.from_numpy(args[0].detach().numpy().reshape(-1)[pos].astype(np.float64))
            if y is out or y is args[0]:
                y = y.clone()
            y.detach().numpy().reshape(-1)[pos] = self.rounder(func(x64), out.dtype).numpy()
            return y
        if done is not None:
            return done
        idx = tuple(torch.from_numpy(i) for i in np.unravel_index(pos, out.shape))
        return self._redo(func, args, kwargs, out, y, idx)

    def _nudged(self, func, args, out, y, pos):
        """The correct roundings of ``+ - * /`` (and ``reciprocal``, ``square``) of float32 operands at
        the flat positions ``pos`` where the float32 result ``o`` may sit on a boundary of the
        format (see :meth:`_verified`), without redoing the operation: None where this does not
        apply (the caller redoes them in float64).

        ``o`` is the correctly rounded float32 value of the exact result ``v`` (IEEE 754 section
        5.4), so ``v`` lies within half a float32 ulp of ``o``, on the side given by the sign of
        ``v - o``, decided exactly in float64: for a sum from TwoSum (Knuth) of the float64 sum
        ``s`` (``sign(s - o)``, else the sign of the error term), for a product ``s = a b``
        (exact in float64), for a quotient ``sign(a - o b) sign(b)`` (``o b`` exact). Where it is
        0, ``o`` is exact and already rounded right. Otherwise ``v`` and ``o``'s float32 neighbour
        ``o'`` on that side lie strictly between ``o`` and the float32 number after ``o'``; the
        format's boundaries (values, midpoints, the overflow threshold: at most p + 1 <= 12
        significant bits, so their lowest float32 significand bit is 0) are not there, so ``v``
        rounds like ``o'``, in every nearest mode. The flagged ``o`` must have a 0 as lowest
        significand bit (then ``o'`` is no boundary either): true of the candidates of the
        midpoint tests, not of the float32 subnormal results that formats reaching below float32's
        normal range also flag (those are redone), except for bf16 and tf32 (``_midpoint_bits``:
        only their midpoints are flagged; float32 subnormal results are correctly rounded too).

        On the CPU, with contiguous results and operands of the result's shape, broadcast rows or
        scalars, the decisions run in one C++ loop (:func:`scan.nudge`, the same float64
        operations); other layouts, and machines without the loop, take the NumPy version below."""
        name = _facts(func).name
        arity = _NUDGE_ARITY.get(name)
        if arity is None or len(args) != arity or out.device.type != "cpu" \
                or (self._below_f32_normal and self._midpoint_bits is None):
            return None
        shape = out.shape
        flat = out.is_contiguous() and y.is_contiguous()
        if flat:
            # the same decisions in one native loop (scan.nudge), where the operands' layouts allow
            res = scan.nudge(name, out, [float(a) if not isinstance(a, torch.Tensor) else a for a in args], pos)
            if res is False:
                return None                         # a non-finite operand or result: redo in float64
            if res is not None:
                moved, stepped = res
                return self._stepped_into(y, out, args, stepped, moved) if moved.size else y
        nidx = None
        ops = []
        with np.errstate(all="ignore"):
            for a in args:
                if isinstance(a, torch.Tensor):
                    if a.device.type != "cpu" or a.dtype is not torch.float32:
                        return None
                    v = a.detach().numpy()
                    if not v.ndim:
                        ops.append(np.full(pos.size, float(v)))
                    elif flat and _flat_like(a, out):
                        ops.append(v.reshape(-1)[pos].astype(np.float64))
                    elif flat and a.is_contiguous() and v.shape == shape[len(shape) - v.ndim:]:
                        ops.append(v.reshape(-1)[pos % v.size].astype(np.float64))   # trailing (bias)
                    else:
                        if nidx is None:
                            nidx = np.unravel_index(pos, shape)
                        ops.append(np.broadcast_to(v, shape)[nidx].astype(np.float64))
                else:
                    ops.append(np.full(pos.size, float(a)))
            if flat:
                o32 = out.detach().numpy().reshape(-1)[pos]
            else:
                nidx = np.unravel_index(pos, shape) if nidx is None else nidx
                o32 = out.detach().numpy()[nidx]
            o = o32.astype(np.float64)
            if not np.isfinite(o.sum() + sum(v.sum() for v in ops)):
                return None                         # a non-finite operand or result (sums of float32
                                                    # values stay far below float64's range)
            if name in ("add", "sub", "rsub"):
                a, b = ops
                if name == "sub":
                    b = -b
                elif name == "rsub":
                    a, b = b, -a
                s = a + b
                bp = s - a
                e = (a - (s - bp)) + (b - bp)
                d = s - o
                side = np.where(d != 0, np.sign(d), np.sign(e))
            elif name in ("mul", "square"):
                a = ops[0]
                b = ops[1] if name == "mul" else a
                side = np.sign(a * b - o)
            else:                                   # div, reciprocal: v - o = (a - o b) / b
                a, b = ops if name == "div" else (np.ones(pos.size), ops[0])
                side = np.sign(a - o * b) * np.sign(b)
            move = side != 0
            if not move.any():
                return y
            stepped = np.nextafter(o32[move], np.where(side[move] > 0, np.float32(np.inf), np.float32(-np.inf)))
        return self._stepped_into(y, out, args, stepped,
                                  pos[move] if flat else tuple(torch.from_numpy(i[move]) for i in nidx))

    def _stepped_into(self, y, out, args, stepped, at):
        """``y`` (copied where it is ``out`` or an operand) with the roundings of the float32
        values ``stepped`` written at ``at``: flat positions (NumPy int64, contiguous ``y``) or a
        tuple of index tensors."""
        if y is out or any(y is a for a in args):
            y = y.clone()
        vals = self.rounder(torch.from_numpy(stepped), out.dtype)
        if isinstance(at, np.ndarray):
            y.detach().numpy().reshape(-1)[at] = vals.numpy()
        else:
            y[at] = vals
        return y

    def _redo(self, func, args, kwargs, out, y, idx):
        """``y`` with the elements at ``idx`` (a tuple of index tensors) computed again in float64."""
        r = self.rounder
        flat, spec = _flatten((args, kwargs))
        if out.device.type == "cpu" and all(
                not isinstance(a, torch.Tensor) or (a.device.type == "cpu" and a.dtype in _NUMPY_FLOATS)
                or not a.is_floating_point() for a in flat):
            # the same gathers on NumPy views: a few microseconds each instead of three torch calls
            nidx = tuple(i.numpy() for i in idx)
            with np.errstate(all="ignore"):       # signalling NaNs become quiet ones, as in torch
                sub = [torch.from_numpy(np.broadcast_to(a.detach().numpy(), out.shape)[nidx].astype(np.float64))
                       if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim()
                       else (a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a)
                       for a in flat]
        else:
            sub = [torch.broadcast_to(a, out.shape)[idx].to(torch.float64)
                   if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim()
                   else (a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a)
                   for a in flat]
        a64, k64 = _unflatten(sub, spec)
        y64 = func(*a64, **k64)                   # dispatch modes are off here (_quiet)
        if y is out or any(y is a for a in flat):
            y = y.clone()
        residual = self._residual(func, a64, k64, y64)
        y[idx] = (r(y64, out.dtype) if residual is None
                  else r.round_exact(y64, residual).to(out.dtype))
        return y

    def _residual(self, func, args, kwargs, out):
        """The exact error of a float64 ``add``/``sub``/``mul`` result (see
        :meth:`Rounder.round_exact`: every mode needs it where the result lies on a rounding
        boundary), else None."""
        r = self.rounder
        if r.identity or not isinstance(out, torch.Tensor) or out.dtype is not torch.float64:
            return None
        name = base_name(func)
        if name not in ("add", "sub", "rsub", "mul") or len(args) < 2:
            return None
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if alpha != 1:
            return None
        a = _as64(args[0], out)
        b = _as64(args[1], out)
        if name == "mul":
            _, e = two_product(a, b)
        elif name == "add":
            _, e = two_sum(a, b)
        elif name == "sub":
            _, e = two_sum(a, -b)
        else:
            _, e = two_sum(b, -a)
        return torch.broadcast_to(e, out.shape)

    def _round_outputs(self, out, natural, residual):
        flat, spec = _flatten(out)
        rounded = []
        for i, t in enumerate(flat):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                dtype = t.dtype
                if isinstance(natural, _Promoted):
                    dtype = natural[0]
                elif natural is not None and i < len(natural) and natural[i] is not None:
                    dtype = natural[i]
                self._check_dtype(dtype)
                if residual is not None and t.dtype is torch.float64:
                    t = self.rounder.round_exact(t, residual).to(dtype)
                else:
                    t = self.rounder(t, dtype)
            rounded.append(t)
        return _unflatten(rounded, spec)

    def _round_args(self, args, kwargs):
        with _quiet():
            return tree_map(lambda a: self._round_input(a), (args, kwargs))

    def _round_input(self, a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            self._check_dtype(a.dtype)
            return self.rounder(a)
        return a

    def _check_dtype(self, dtype) -> None:
        ok = self._holds.get(dtype)
        if ok is None:
            ok = self._holds[dtype] = holds_format(dtype, self.spec)
        if not ok:
            raise EmulationError(
                f"{dtype} tensors cannot hold every value of {self.spec.name!r}: results would be "
                f"rounded a second time when stored. {self._wide_enough()}")

    def _wide_enough(self) -> str:
        """The fix for :meth:`_check_dtype`'s error: the torch dtypes that do hold the format."""
        fits = [d for d in (torch.float32, torch.float64) if holds_format(d, self.spec)]
        if fits == [torch.float64]:
            return "Run the emulated code on float64 tensors, e.g. x.double() / model.double()"
        return "Run the emulated code on float32 (or float64) tensors, e.g. model.float() / x.double()"

    # ---- accumulated contractions and reductions ------------------------------------------
    def _contract(self, func, args, kwargs):
        name = base_name(func)
        if self.round_inputs:
            args, kwargs = self._round_args(args, kwargs)
        natural = _natural_dtypes(func, args, kwargs)[0]
        if natural is None:
            return NotImplemented
        self._check_dtype(natural)
        a = [x.to(torch.float64) if isinstance(x, torch.Tensor) else x for x in args]
        if name in ("mm", "bmm"):
            res = self._mm(a[0], a[1])
        elif name == "mv":
            res = self._mm(a[0], a[1][:, None])[:, 0]
        elif name in ("dot", "vdot"):
            res = self._mm(a[0][None, :], a[1][:, None])[0, 0]
        elif name in ("addmm", "baddbmm", "addmv", "addbmm"):
            bias, x, y = a[0], a[1], a[2]
            if name == "addmv":
                prod = self._mm(x, y[:, None])[:, 0]
            elif name == "addbmm":
                b, n, m = x.shape
                prod = self._mm(x.permute(1, 0, 2).reshape(n, b * m), y.reshape(b * m, y.shape[-1]))
            else:
                prod = self._mm(x, y)
            beta = kwargs.get("beta", a[3] if len(a) > 3 else 1)
            alpha = kwargs.get("alpha", a[4] if len(a) > 4 else 1)
            with _quiet():
                if beta == 1 and alpha == 1:
                    bias = torch.broadcast_to(bias, prod.shape)
                    s, e = two_sum(bias, prod)
                    res = self.rounder.round_exact(s, e)
                else:
                    bias_term = torch.zeros_like(prod) if beta == 0 else beta * bias
                    res = self.rounder(bias_term + alpha * prod)
        else:
            return NotImplemented
        with _quiet():
            return res.to(natural)

    def _mm(self, x, y):
        total = accumulated_matmul(x, y, self.acc_rounder, self.chunk, self.order, quiet=_quiet)
        with _quiet():
            return self.rounder(total)

    def _reduce(self, func, args, kwargs):
        name = base_name(func)
        if self.round_inputs:
            args, kwargs = self._round_args(args, kwargs)
        x = args[0]
        if not x.is_floating_point():
            return NotImplemented
        dtype = kwargs.get("dtype") or x.dtype
        if not dtype.is_floating_point:
            return NotImplemented
        self._check_dtype(dtype)
        with _quiet():
            x64 = x.to(torch.float64)
            if name == "cumsum":
                dim = args[1] if len(args) > 1 else kwargs["dim"]
                return self.rounder(accumulated_cumsum(x64, dim, self.acc_rounder)).to(dtype)
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
                dims = tuple(range(x.dim()))
            elif isinstance(dims, int):
                dims = (dims,)
            dims = tuple(dims)
            if name == "nansum":
                x64 = torch.nan_to_num(x64, nan=0.0, posinf=float("inf"), neginf=-float("inf"))
                x64 = torch.where(torch.isnan(x.to(torch.float64)), torch.zeros_like(x64), x64)
            total = self.rounder(accumulated_sum(x64, dims, self.acc_rounder, self.chunk, self.order))
            if name == "mean":
                count = 1
                for d in dims:
                    count *= x.shape[d] if x.dim() else 1
                total = self.rounder(total / count)
            if not keepdim:
                nd = x.dim()
                for d in sorted({d % nd for d in dims} if nd else (), reverse=True):
                    total = total.squeeze(d)
            return total.to(dtype)


# ---- helpers ---------------------------------------------------------------------------------
def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in _flatten(out)[0] if isinstance(t, torch.Tensor)]


# leaves of the argument trees ATen operations receive (pytree treats them as leaves too)
_LEAVES = (torch.Tensor, int, float, bool, str, complex, type(None), torch.dtype, torch.device,
           torch.layout, torch.memory_format, torch.SymInt, torch.SymFloat, torch.SymBool)


def _collect(x, leaves: list) -> bool:
    t = type(x)
    if t is tuple or t is list:
        return all(_collect(v, leaves) for v in x)
    if t is dict:
        return all(_collect(v, leaves) for v in x.values())
    if isinstance(x, _LEAVES):
        leaves.append(x)
        return True
    return False   # a namedtuple, an OrderedDict, ...: left to pytree


class _Template:
    """The spec of :func:`_flatten` for plain tuples, lists and dicts: the tree itself."""

    __slots__ = ("tree",)

    def __init__(self, tree):
        self.tree = tree


def _flatten(tree):
    """``torch.utils._pytree.tree_flatten(tree)`` (the same leaves in the same order, depth first,
    dict values in insertion order), without its per-node bookkeeping where ``tree`` holds only
    plain tuples, lists, dicts and leaves."""
    if isinstance(tree, torch.Tensor):
        return [tree], _Template(tree)
    leaves: list = []
    if _collect(tree, leaves):
        return leaves, _Template(tree)
    return tree_flatten(tree)


def _unflatten(leaves, spec):
    """The inverse of :func:`_flatten`."""
    if not isinstance(spec, _Template):
        return tree_unflatten(leaves, spec)
    it = iter(leaves)

    def build(x):
        t = type(x)
        if t is tuple:
            return tuple(build(v) for v in x)
        if t is list:
            return [build(v) for v in x]
        if t is dict:
            return {k: build(v) for k, v in x.items()}
        return next(it)

    return build(spec.tree)


def _written(func, args, kwargs):
    """The tensors an operation writes into (``out=`` and in-place arguments)."""
    found = []
    for i, arg in enumerate(func._schema.arguments):
        info = arg.alias_info
        if info is not None and info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            found += [t for t in _flatten(value)[0] if isinstance(t, torch.Tensor)]
    return found


class _Facts:
    """What the dispatch needs to know about one ATen operation, looked up once."""

    __slots__ = ("func", "kind", "mutable", "basic", "transcendental", "name", "rounded")

    def __init__(self, func):
        self.func = func                  # keeps the object (and so its id) alive
        self.kind = classify(func)
        self.mutable = func._schema.is_mutable
        self.basic = _is_basic(func)
        self.transcendental = _is_transcendental(func)
        self.name = base_name(func)
        self.rounded = _label(func, "rounded")


_FACTS: dict[int, _Facts] = {}


def _facts(func) -> _Facts:
    """The :class:`_Facts` of ``func``, by ``id`` (an OpOverload's own ``__hash__`` is Python code,
    about a microsecond per lookup of each of the several caches it would otherwise go through)."""
    f = _FACTS.get(id(func))
    if f is None or f.func is not func:
        f = _FACTS[id(func)] = _Facts(func)
    return f


@lru_cache(maxsize=None)
def _is_mutable(func) -> bool:
    return func._schema.is_mutable


# torch's CPU sqrt is not correctly rounded (SLEEF-style kernels within about half an ulp: 20% of
# random float32 results and 1.4% of float64 ones differ from IEEE sqrt, torch 2.13.0), so neither
# the double rounding theorem nor the midpoint argument of _verified holds for its float32 result:
# in the float32 lane it takes the library functions' check instead
_NOT_CORRECTLY_ROUNDED = frozenset({"sqrt"})


@lru_cache(maxsize=None)
def _is_basic(func) -> bool:
    name = base_name(func)
    return name in BASIC and name not in _NOT_CORRECTLY_ROUNDED and not func._overloadname.endswith("_mode")


@lru_cache(maxsize=None)
def _is_transcendental(func) -> bool:
    name = base_name(func)
    return name in TRANSCENDENTAL or name in _NOT_CORRECTLY_ROUNDED


# BASIC operations that Emulation._nudged rounds without a float64 redo, with their arity
_NUDGE_ARITY = {"add": 2, "sub": 2, "rsub": 2, "mul": 2, "div": 2, "reciprocal": 1, "square": 1}

# BASIC operations whose result is one of their operands (or zero): exact in any precision
_SELECTING = frozenset({"neg", "abs", "relu", "clamp", "clamp_min", "clamp_max", "hardtanh", "maximum",
                        "minimum", "fmax", "fmin", "threshold_backward"})


# moves whose floating outputs hold only values of their tensor arguments (selections, views,
# copies; max.other picks from two): their outputs stay marked as values of the format (see Emulation._in_format)
_MOVES_KEEPING_MARKS = frozenset({"amax", "amin", "max", "min", "view", "_unsafe_view", "reshape", "expand",
                                  "t", "transpose", "permute", "unsqueeze", "squeeze", "clone", "select",
                                  "slice", "detach", "alias", "contiguous"})

# _SELECTING operations whose result is one of their operands or +0 (neg is not: -0 from +0, which
# formats without a negative zero do not hold)
_KEEPS_VALUES = _SELECTING - {"neg"}


def _float32_layout_midpoint(spec) -> tuple[int, int] | None:
    """``(mask, half)`` for formats whose values are the float32 values with the low ``23 - m``
    mantissa bits zero, from float32's subnormals up to its last binade (bf16 = e8m7, tf32 =
    e8m10): a float32 number is a rounding midpoint of the format exactly when
    ``bits & mask == half``. None for other formats."""
    if not isinstance(spec, FloatFormat) or not spec.signed or spec.ebits != 8 or spec.bias != 127 \
            or not spec.subnormals or not 1 <= spec.mbits <= 22:
        return None
    m = spec.mbits
    if spec.smallest_positive != 2.0 ** (-126 - m) or spec.max_value != (2 - 2.0 ** -m) * 2.0 ** 127:
        return None
    return (1 << (23 - m)) - 1, 1 << (22 - m)


def _exact_in_float32(a) -> bool:
    """A non-tensor argument that float32 arithmetic uses unchanged."""
    if a is None or isinstance(a, (bool, str)):
        return True
    if isinstance(a, int):
        return abs(a) <= 2 ** 24
    if isinstance(a, float):
        try:
            return struct.unpack("f", struct.pack("f", a))[0] == a or a != a
        except OverflowError:
            return False
    return False


@lru_cache(maxsize=256)
def _overflow_agrees(spec, mode, saturate: bool) -> bool:
    """True when rounding into ``spec`` rounds +-float32's largest finite value as it rounds +-infinity
    (bf16 and tf32 round-to-nearest: both overflow; with saturate=True: both give the largest
    value). Rounding is monotone, so every value beyond float32's range then rounds like the
    float32 infinity that float32 arithmetic gives for it."""
    x = torch.tensor([_F32_MAX, float("inf"), -_F32_MAX, -float("inf")])
    with _quiet():
        y = Rounder(spec, mode, saturate=saturate or None)(x).tolist()
    return y[0] == y[1] and y[2] == y[3]


@lru_cache(maxsize=None)
def _label(func, how: str) -> str:
    return f"{func}/{how}"


def _broadcasts_to(s, shape) -> bool:
    """``torch.broadcast_shapes(s, shape) == shape`` (which raises for incompatible shapes) without
    its Python reference implementation in the common case."""
    if len(s) <= len(shape) and all(a == b or a == 1 for a, b in zip(reversed(s), reversed(shape))):
        return True
    return torch.broadcast_shapes(s, shape) == shape


def _flat_like(a, out: torch.Tensor) -> bool:
    """``a`` is a contiguous float32 CPU tensor of ``out``'s shape (flat positions index both)."""
    return (isinstance(a, torch.Tensor) and a.dtype is torch.float32 and a.device.type == "cpu"
            and a.shape == out.shape and a.is_contiguous())


def _bits_equal(x: torch.Tensor, mask: int, value: int):
    """The positions (a tuple of index tensors, as ``nonzero(as_tuple=True)``) of the float32
    elements of ``x`` whose bits satisfy ``bits & mask == value``, or None where none do. On the
    CPU through NumPy views of the same memory: its boolean reductions cost a few microseconds
    where torch's cost about 1 ns per element."""
    if x.device.type == "cpu":
        v = x.detach().numpy().view(np.int32)
        if v.ndim == 0:
            return () if (int(v) & mask) == value else None
        pos = np.flatnonzero((v & mask) == value)
        if pos.size == 0:
            return None
        return tuple(torch.from_numpy(i) for i in np.unravel_index(pos, v.shape))
    hit = (x.view(torch.int32) & mask) == value
    return hit.nonzero(as_tuple=True) if bool(hit.any()) else None


def _floating(dtypes) -> bool:
    return any(d is not None and d.is_floating_point for d in dtypes)


def _narrows(src: torch.dtype, dst: torch.dtype) -> bool:
    """True when ``dst`` cannot hold every ``src`` value."""
    if not dst.is_floating_point:
        return False
    rank = {torch.float64: 3, torch.float32: 2, torch.float16: 1, torch.bfloat16: 1}
    if src == dst:
        return False
    if {src, dst} == {torch.float16, torch.bfloat16}:
        return True
    return rank.get(dst, 0) < rank.get(src, 0)


def _as64(a, like: torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(torch.float64)
    return torch.tensor(float(a), dtype=torch.float64, device=like.device)


_DTYPE_CACHE: dict = {}


class _Promoted(list):
    """A guess (no meta kernel): one dtype for every floating output."""


def _natural_dtypes(func, args, kwargs) -> list:
    """The dtypes of ``func``'s flattened outputs for the original arguments (None for
    non-tensors), from one run on meta tensors per signature."""
    flat, spec = _flatten((args, kwargs))
    key = (func, tuple((a.dtype, a.dim() == 0) if isinstance(a, torch.Tensor) else type(a) for a in flat),
           str(kwargs.get("dtype")))
    hit = _DTYPE_CACHE.get(key)
    if hit is not None:
        return hit
    floats = [a for a in flat if isinstance(a, torch.Tensor) and a.is_floating_point()]
    try:
        with _disable_current_modes():
            meta = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
                    if isinstance(a, torch.Tensor) else a for a in flat]
            m_args, m_kwargs = _unflatten(meta, spec)
            out = func(*m_args, **m_kwargs)
        dtypes = [t.dtype if isinstance(t, torch.Tensor) else None for t in _flatten(out)[0]]
    except Exception:  # noqa: BLE001 - no meta kernel: promote over the floating arguments
        dims = [a for a in floats if a.dim() > 0] or floats
        if not dims:
            dtypes = []
        else:
            d = dims[0].dtype
            for a in dims[1:]:
                d = torch.promote_types(d, a.dtype)
            dtypes = _Promoted([d])
    _DTYPE_CACHE[key] = dtypes
    return dtypes
