"""Shared test helpers: the independent oracles and stress inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatlab

ml_dtypes = pytest.importorskip("ml_dtypes")
en_dtypes = pytest.importorskip("en_dtypes")

# floatlab name -> numpy dtype of the independent oracle (a cast with round-to-nearest)
ML_ORACLES = {
    "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
    "e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "e3m4": ml_dtypes.float8_e3m4, "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn, "e2m1": ml_dtypes.float4_e2m1fn,
    "e8m0": ml_dtypes.float8_e8m0fnu, "bf16": ml_dtypes.bfloat16, "fp16": np.float16,
}
EN_ORACLES = {"hif8": en_dtypes.hifloat8}
ALL_ORACLES = {**ML_ORACLES, **EN_ORACLES}
ORACLE_ROUNDING = {name: "rne" for name in ML_ORACLES} | {"hif8": "rna"}

SCALAR_FORMATS = ["fp32", "tf32", "bf16", "fp16", "e5m2", "e4m3", "e4m3fnuz", "e5m2fnuz", "e3m4",
                  "e3m2", "e2m3", "e2m1", "e1m2", "e8m0", "ue4m3", "ue5m3", "int8", "int4", "int2",
                  "hif8"]


def oracle_codes(x32: np.ndarray, name: str) -> np.ndarray:
    """Codes of the oracle's cast of float32 values (as int64)."""
    dt = ALL_ORACLES[name]
    with np.errstate(all="ignore"):
        y = x32.astype(dt)
    width = np.dtype(dt).itemsize
    return y.view({1: np.uint8, 2: np.uint16}[width]).astype(np.int64)


def stress_float32(fmt_name: str, n: int, seed: int) -> np.ndarray:
    """float32 inputs that probe a format: random bit patterns over the whole float32 range,
    values spread over the format's range, exact midpoints (ties) between neighbouring values
    and their float32 neighbours, subnormals, overflow, +-Inf, NaN."""
    rng = np.random.default_rng(seed)
    fmt = floatlab.get_format(fmt_name)
    parts = [rng.integers(0, 2 ** 32, n // 4, dtype=np.uint64).astype(np.uint32).view(np.float32)]
    lo = np.log2(fmt.smallest_positive) - 3
    hi = np.log2(fmt.overflow_boundary) + 2
    mags = np.exp2(rng.uniform(lo, hi, n // 4)) * rng.choice([-1, 1], n // 4)
    with np.errstate(over="ignore"):
        parts.append(mags.astype(np.float32))
    if fmt.bits <= 16:
        table = np.array([float(v) for v in _table(fmt_name)])
        table = np.append(table, [fmt.overflow_boundary, -fmt.overflow_boundary])
        table.sort()
        mids = ((table[:-1] + table[1:]) / 2).astype(np.float32)
        k = max(1, (n // 2) // (3 * len(mids)) + 1)
        mids = np.tile(mids, k)
        parts += [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754944e-38,
                         3.4028235e38, -3.4028235e38, fmt.max_value, -fmt.max_value,
                         fmt.smallest_positive, fmt.smallest_positive / 2], dtype=np.float32)
    parts.append(specials)
    return np.concatenate(parts)


def _table(name):
    from floatlab.reference.scalar import value_table
    return value_table(floatlab.get_format(name))


def codes_of(x: torch.Tensor, fmt: str, **kw) -> np.ndarray:
    return floatlab.encode(x, fmt, **kw).codes.numpy().astype(np.int64)
