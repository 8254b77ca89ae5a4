"""A counter-based random number generator written in integer tensor ops.

The fast path uses it for the stochastic modes when the caller passes no ``torch.Generator``:
drawing ``torch.rand`` for every element costs more than the whole fused rounding kernel (186 ms
for 2^24 float64 draws on the 2-core CI machine, against 43 ms for ``x.clone()``), while a hash of
``(seed, element index)`` fuses into the kernel and costs a few integer operations per element.

The hash is Chris Wellons' ``lowbias32`` (an invertible 32-bit mixer), keyed by a 64-bit seed and
applied twice per 32-bit word. Every step is plain int64 arithmetic whose intermediates stay below
2^63 (no overflow, no undefined behaviour in generated C++), so the bits are the same on every
device and under eager, compiled or CUDA execution. The seed is drawn from torch's default CPU
generator, so ``torch.manual_seed`` makes the draws reproducible.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """``(h * c) mod 2^32`` for ``h`` in [0, 2^32), with every intermediate below 2^49."""
    lo, hi = c & 0xFFFF, c >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & MASK32


def mix32(h: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection of [0, 2^32) with good avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def random_word(index: torch.Tensor, seed: torch.Tensor, width: int) -> torch.Tensor:
    """``width`` (32 or 62) uniformly random bits per element as int64, keyed by ``seed``.

    Args:
        index: int64 element indices (distinct indices give independent words).
        seed: int64 0-d tensor, any value.
        width: 32 or 62.
    """
    s0 = seed & MASK32
    s1 = (seed >> 32) & MASK32
    lo, hi = index & MASK32, (index >> 32) & MASK32
    h1 = mix32(mix32(lo ^ s0) ^ hi ^ s1)
    if width == 32:
        return h1
    h2 = mix32(h1 ^ mix32(s1 ^ 0x5BD1E995))
    return (h1 << 30) | (h2 >> 2)


def draw_seed(device: torch.device) -> torch.Tensor:
    """A fresh 0-d int64 seed from torch's default CPU generator, placed on ``device``."""
    return torch.randint(0, 2 ** 62, (), dtype=torch.int64).to(device)
