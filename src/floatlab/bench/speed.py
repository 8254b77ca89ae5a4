"""Side-by-side speed of floatlab and its peers on one tensor, in one process.

Every implementation fake-quantizes the same float32 tensor (input -> format -> float32) and is
timed interleaved with ``x.clone()`` (a fresh output, like the implementations) and
``dst.copy_(x)`` (a preallocated output, like ``quantize(..., out=dst)``); the best of ``reps``
runs counts. A peer that is not installed, or fails, is reported as skipped with the reason.
Used by ``floatlab bench speed`` and ``benchmarks/speed.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import floatlab

BLOCK_ROW = 4096          # block formats see x as (n / 4096, 4096): blocks along the last axis


@dataclass
class Row:
    case: str
    impl: str
    seconds: float | None
    vs_clone: float | None
    vs_copy: float | None
    note: str = ""


def _np(x: torch.Tensor) -> np.ndarray:
    return x.numpy()


# ---- peers: each returns a callable x -> tensor/array, or raises to be skipped -------------
def _ml_dtypes_cast(name: str):
    import ml_dtypes
    dt = getattr(ml_dtypes, name)
    return lambda x: torch.from_numpy(_np(x).astype(dt).astype(np.float32))


def _en_dtypes_hif8():
    import en_dtypes
    return lambda x: torch.from_numpy(_np(x).astype(en_dtypes.hifloat8).astype(np.float32))


def _qtorch(exp: int, man: int, rounding: str):
    from qtorch.quant import float_quantize
    return lambda x: float_quantize(x, exp=exp, man=man, rounding=rounding)


def _pychop_e4m3():
    import pychop
    pychop.backend("torch")
    ch = pychop.Chop(exp_bits=4, sig_bits=3, rmode=1)
    return lambda x: ch(x)


def _gfloat_e4m3():
    import gfloat
    from gfloat.formats import format_info_ocp_e4m3
    return lambda x: gfloat.round_ndarray(format_info_ocp_e4m3, _np(x))


def _torch_f8():
    return lambda x: x.to(torch.float8_e4m3fn).to(torch.float32)


def _torch_cast(dtype):
    return lambda x: x.to(dtype).to(torch.float32)


def _torchao_f8():
    from torchao.quantization.quant_primitives import (_dequantize_affine_float8,
                                                       _quantize_affine_float8)
    one = torch.ones(())
    return lambda x: _dequantize_affine_float8(_quantize_affine_float8(x, one), one)


def _torchao_bf16_sr():
    from torchao.optim.quant_utils import _fp32_to_bf16_sr
    return lambda x: _fp32_to_bf16_sr(x).float()


def _torchao_mxfp4():
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    f4 = torch.float4_e2m1fn_x2

    def run(x):
        s, d = to_mx(x, f4, 32)
        return to_dtype(d, s, f4, 32, torch.float32)
    return run


def _torchao_nvfp4():
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor
    return lambda x: NVFP4Tensor.to_nvfp4(x, 16).dequantize(torch.float32)


def _ml_dtypes_mxfp4():
    """OCP MX by hand with ml_dtypes: E8M0 floor scale, float4_e2m1fn elements (RNE)."""
    import ml_dtypes

    def run(x):
        a = _np(x).reshape(-1, 32)
        amax = np.abs(a).max(axis=1, keepdims=True)
        e = np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2
        scale = np.exp2(np.clip(e, -127, 127)).astype(np.float32)
        q = (a / scale).astype(ml_dtypes.float4_e2m1fn).astype(np.float32) * scale
        return q.reshape(x.shape)
    return run


def _ml_dtypes_nvfp4():
    """NVFP4 by hand with ml_dtypes: FP32 tensor scale, E4M3 block scales, E2M1 elements."""
    import ml_dtypes

    def run(x):
        a = _np(x).reshape(-1, 16)
        s_enc = np.float32(6 * 448) / np.abs(a).max()
        amax = np.abs(a).max(axis=1, keepdims=True)
        s_b = (amax / 6 * s_enc).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        mul = np.where(s_b > 0, 1 / (s_b / s_enc), 0).astype(np.float32)
        q = (a * mul).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
        return (q * s_b / s_enc).reshape(x.shape)
    return run


def _brevitas_e4m3():
    """brevitas' OCP e4m3 activation quantizer (it adds a per-tensor scale)."""
    from brevitas.nn import QuantIdentity
    from brevitas.quant.float_quant_ocp import Fp8e4m3OCPActPerTensorFloat
    mod = QuantIdentity(Fp8e4m3OCPActPerTensorFloat, return_quant_tensor=False).eval()
    return lambda x: mod(x)


def _brevitas_mxfp4():
    """brevitas' OCP MX activation quantizer with E2M1 elements, blocks along the last axis."""
    from brevitas.nn import QuantIdentity
    from brevitas.quant.mx_quant_ocp import MXFloat8e4m3Act
    q = MXFloat8e4m3Act.let(exponent_bit_width=2, mantissa_bit_width=1, bit_width=4, group_dim=-1)
    mod = QuantIdentity(q, return_quant_tensor=False).eval()
    return lambda x: mod(x)


def _floatlab(fmt: str, rounding: str | None = None, out: bool = False):
    def run(x, dst=None):
        return floatlab.quantize(x, fmt, rounding=rounding, out=dst)
    return run


# case -> (floatlab format, rounding, [(peer name, factory)])
CASES: dict[str, tuple[str, str | None, list[tuple[str, Callable]]]] = {
    "e4m3 rne": ("e4m3", "rne", [("torchao", _torchao_f8), ("torch cast", _torch_f8),
                                 ("qtorch", lambda: _qtorch(4, 3, "nearest")),
                                 ("ml_dtypes", lambda: _ml_dtypes_cast("float8_e4m3fn")),
                                 ("pychop", _pychop_e4m3), ("gfloat", _gfloat_e4m3),
                                 ("brevitas", _brevitas_e4m3)]),
    "e5m2 rne": ("e5m2", "rne", [("torch cast", lambda: _torch_cast(torch.float8_e5m2)),
                                 ("ml_dtypes", lambda: _ml_dtypes_cast("float8_e5m2"))]),
    "fp16 rne": ("fp16", "rne", [("torch cast", lambda: _torch_cast(torch.float16))]),
    "bf16 rne": ("bf16", "rne", [("torch cast", lambda: _torch_cast(torch.bfloat16))]),
    "hif8 rna": ("hif8", "rna", [("en_dtypes", _en_dtypes_hif8)]),
    "e4m3 sr": ("e4m3", "sr", [("qtorch", lambda: _qtorch(4, 3, "stochastic"))]),
    "bf16 sr": ("bf16", "sr", [("torchao", _torchao_bf16_sr),
                               ("qtorch", lambda: _qtorch(8, 7, "stochastic"))]),
    "mxfp4": ("mxfp4", None, [("ml_dtypes (by hand)", _ml_dtypes_mxfp4),
                              ("torchao", _torchao_mxfp4), ("brevitas", _brevitas_mxfp4)]),
    "nvfp4": ("nvfp4", None, [("ml_dtypes (by hand)", _ml_dtypes_nvfp4),
                              ("torchao", _torchao_nvfp4)]),
    "hif4": ("hif4", None, []),
}


# issue 20's goals for ``floatlab out=`` against ``dst.copy_(x)`` (2^24 float32 values, 2 threads)
GOALS = {"e4m3 rne": 0.8, "e5m2 rne": 0.8, "fp16 rne": 0.8, "bf16 rne": 0.8, "hif8 rna": 0.8,
         "e4m3 sr": 0.5, "bf16 sr": 0.5, "mxfp4": 0.5, "nvfp4": 0.5, "hif4": 0.5}


def goal_note(case: str, impl: str, vs_copy: float | None) -> str:
    """``">= 0.8: met"`` (or ``not met``) for a ``floatlab out=`` row with a goal, else ``""``."""
    goal = GOALS.get(case)
    if impl != "floatlab out=" or goal is None or vs_copy is None:
        return ""
    return f"copy_ >= {goal}: {'met' if vs_copy >= goal else 'not met'}"


def fresh_pages() -> bool:
    """Make every allocation of 1 MiB or more a fresh ``mmap`` (glibc ``M_MMAP_THRESHOLD``).

    glibc raises its mmap threshold as large blocks are freed; after a peer allocated a lot,
    64 MB outputs come from recycled heap memory without page faults, and ``x.clone()`` drops
    from ~45 ms to ~10 ms in the middle of a run. Fixing the threshold keeps every
    implementation, and every case, in the state of a fresh process (the issue's setting).
    """
    import ctypes
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20))   # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_speed(size: int = 2 ** 24, reps: int = 5, cases: list[str] | None = None,
              peers: bool = True, log: Callable[[str], None] = print) -> list[Row]:
    """Time every case; returns the rows (also printed through ``log`` as they complete)."""
    fresh_pages()
    torch.manual_seed(0)
    size = max(BLOCK_ROW, size // BLOCK_ROW * BLOCK_ROW)
    x = torch.randn(size // BLOCK_ROW, BLOCK_ROW)
    dst = torch.empty_like(x)
    rows: list[Row] = []
    with torch.no_grad():
        for case in cases or list(CASES):
            fmt, rounding, peer_list = CASES[case]
            impls = _implementations(rows, case, fmt, rounding, peer_list if peers else [], x, dst, log)
            _measure(impls, rows, case, x, dst, reps, log)
    return rows


def _implementations(rows, case, fmt, rounding, peer_list, x, dst, log):
    fl = _floatlab(fmt, rounding)
    impls = [("floatlab", lambda: fl(x)), ("floatlab out=", lambda: fl(x, dst))]
    if rounding not in ("sr", "sr_half"):
        # packed codes (+ scales) and back: what floatlab.save, `floatlab ptq` and exports run
        # (stochastic modes without a generator encode on the plain path: not timed here)
        impls.append(("floatlab encode", lambda: floatlab.encode(x, fmt, rounding)))
        codes = {}

        def decode():
            if "q" not in codes:
                codes["q"] = floatlab.encode(x, fmt, rounding)
            return codes["q"].dequantize()
        impls.append(("floatlab decode", decode))
    for name, factory in peer_list:
        try:
            f = factory()
            f(x[:2])                               # fail fast on an API mismatch
            impls.append((name, lambda f=f: f(x)))
        except Exception as err:  # noqa: BLE001 - any failure: report and skip the peer
            _skip(rows, case, name, err, x.numel(), log)
    return impls


def _measure(impls, rows, case, x, dst, reps, log) -> None:
    """Warm up, then time clone, copy_ and every implementation interleaved; best of reps."""
    best = {"clone": float("inf"), "copy": float("inf")}
    slow: set[str] = set()
    live = []
    for name, fn in impls:
        try:
            fn()                                   # warm-up: compilation, caches
            t = _time(fn)
        except Exception as err:  # noqa: BLE001
            _skip(rows, case, name, err, x.numel(), log)
            continue
        live.append((name, fn))
        best[name] = t
        if t > 2.0:
            slow.add(name)                         # one timed run is enough (pychop, gfloat)
    for _ in range(reps):
        best["clone"] = min(best["clone"], _time(lambda: x.clone()))
        best["copy"] = min(best["copy"], _time(lambda: dst.copy_(x)))
        for name, fn in live:
            if name not in slow:
                best[name] = min(best[name], _time(fn))
    for name, _ in live:
        t = best[name]
        row = Row(case, name, t, best["clone"] / t, best["copy"] / t)
        row.note = goal_note(case, name, row.vs_copy)
        rows.append(row)
        log(format_row(row, x.numel()))


def _skip(rows: list[Row], case: str, name: str, err: Exception, n: int, log) -> None:
    msg = (str(err).splitlines() or [""])[0][:80]
    row = Row(case, name, None, None, None, f"skipped: {type(err).__name__}: {msg}")
    rows.append(row)
    log(format_row(row, n))


def format_row(r: Row, n: int) -> str:
    if r.seconds is None:
        return f"| {r.case} | {r.impl} | - | - | - | - | {r.note} |"
    return (f"| {r.case} | {r.impl} | {r.seconds * 1e3:.1f} | {n / r.seconds / 1e6:.0f} | "
            f"{r.vs_clone:.2f} | {r.vs_copy:.2f} | {r.note} |")


HEADER = ("| case | implementation | ms | Melem/s | vs x.clone() | vs dst.copy_(x) | goal (issue 20) |\n"
          "|---|---|---:|---:|---:|---:|---|")
