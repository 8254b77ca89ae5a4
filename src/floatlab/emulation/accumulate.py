"""Emulated accumulation for matrix products and sums: floatlab.gemm's accumulator model, batched.

The model is :mod:`floatlab.gemm.accumulate`'s (a matrix engine's blocked K-loop): the exact
products of a chunk of ``chunk`` consecutive K-terms are summed in float64, and the running sum is
rounded into the accumulator format after every chunk. This module adds what an op-by-op
emulation needs on top of it:

* leading batch dimensions (``bmm``, ``baddbmm``) and a shared ``torch.Generator`` for the
  stochastic modes (one stream through the whole program, so a replay is identical);
* a summation **order** over the chunks: ``"forward"`` (k ascending, the engine's order),
  ``"reverse"`` (k descending), ``"pairwise"`` (each chunk sum rounded, then a balanced binary
  tree of rounded additions, as blocked or recursive summation);
* every rounded addition ``acc + chunk`` is rounded as the exact sum (TwoSum residual,
  :meth:`~floatlab.emulation.rounding.Rounder.round_exact`), so no mode is disturbed by the
  float64 addition (a float64 sum on a midpoint or grid point is decided by its residual). A chunk sum itself is exact when the products fit in 53
  bits (``chunk = 1``, or FP16/BF16 operands with short chunks); otherwise it carries one float64
  rounding, far below any format emulated here.

With ``order="forward"`` and a deterministic mode this equals
:func:`floatlab.gemm.blocked_matmul` (tested), which rounds with the same model.
"""

from __future__ import annotations

import contextlib

import torch

from .rounding import Rounder, two_sum

ORDERS = ("forward", "reverse", "pairwise")


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    return order


def _add(acc: Rounder, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc(a + b)`` rounded as the exact sum."""
    if acc.mode.is_nearest or acc.identity:
        return acc(a + b)
    s, e = two_sum(a, b)
    return acc.round_exact(s, e)


def accumulate_chunks(partials: list[torch.Tensor], acc: Rounder, order: str,
                      quiet=contextlib.nullcontext) -> torch.Tensor:
    """Sum float64 chunk results ``partials`` (same shape) with every addition rounded by ``acc``.

    ``quiet()`` is entered around the rounding (the emulation hides it from outer dispatch modes).
    """
    with quiet():
        return _accumulate_chunks(partials, acc, order)


def _accumulate_chunks(partials, acc, order):
    if order == "pairwise":
        level = [acc(p) for p in partials]
        while len(level) > 1:
            nxt = [_add(acc, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return level[0]
    seq = partials if order == "forward" else partials[::-1]
    total = torch.zeros_like(seq[0])
    for p in seq:
        total = _add(acc, total, p)
    return total


def accumulated_matmul(x: torch.Tensor, y: torch.Tensor, acc: Rounder, chunk: int,
                       order: str = "forward", quiet=contextlib.nullcontext) -> torch.Tensor:
    """``x @ y`` (float64, shapes ``(..., M, K)`` and ``(..., K, N)``) through the accumulator.

    Returns float64 values of the accumulator format, shape ``(..., M, N)``. The chunk products
    are ordinary matmuls (an outer ``FlopCounterMode`` counts them: ``2 M N K`` in all); the
    rounding runs inside ``quiet()``.
    """
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    k = x.shape[-1]
    if k == 0:
        return torch.zeros(*torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]), x.shape[-2], y.shape[-1],
                           dtype=torch.float64)
    partials = [x[..., k0:k0 + chunk] @ y[..., k0:k0 + chunk, :] for k0 in range(0, k, chunk)]
    return accumulate_chunks(partials, acc, order, quiet)


def accumulated_sum(x: torch.Tensor, dims: tuple[int, ...], acc: Rounder, chunk: int,
                    order: str = "forward") -> torch.Tensor:
    """Sum of float64 ``x`` over ``dims`` (kept as size-1 dims) through the accumulator."""
    x = x.to(torch.float64)
    nd = x.dim()
    dims = tuple(sorted({d % nd for d in dims})) if nd else ()
    keep = [d for d in range(nd) if d not in dims]
    moved = x.permute(*keep, *dims) if nd else x.reshape(1)
    lead = [x.shape[d] for d in keep]
    flat = moved.reshape(*lead, -1)
    k = flat.shape[-1]
    if k == 0:
        out = torch.zeros(lead, dtype=torch.float64)
    else:
        partials = [flat[..., k0:k0 + chunk].sum(-1) for k0 in range(0, k, chunk)]
        out = accumulate_chunks(partials, acc, order)
    shape = [1 if d in dims else x.shape[d] for d in range(nd)]
    return out.reshape(shape)


def accumulated_cumsum(x: torch.Tensor, dim: int, acc: Rounder) -> torch.Tensor:
    """Running sums of float64 ``x`` along ``dim``, every prefix rounded by ``acc`` (chunk 1)."""
    x = x.to(torch.float64)
    if x.dim() == 0:
        return acc(x)
    moved = x.movedim(dim, -1)
    total = torch.zeros_like(moved[..., 0])
    outs = []
    for i in range(moved.shape[-1]):
        total = _add(acc, total, moved[..., i])
        outs.append(total)
    if not outs:
        return x.clone()
    return torch.stack(outs, -1).movedim(-1, dim)
