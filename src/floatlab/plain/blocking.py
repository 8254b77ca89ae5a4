"""Reshape a tensor into blocks along any axis (or into 2D tiles), with zero padding, and back.

Every block format uses this one helper: the scale rule then sees a ``(nblocks, block)`` matrix.
:func:`float32_input` is how the rules that compute in float32 (NVFP4-style AMAX, Four Over Six,
HiF4) see a float64 input, in the plain pipeline and in the fused kernels alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


F32_MAX = float(torch.finfo(torch.float32).max)


def float32_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the float32 input of a float32 block pipeline (AMAX, Four Over Six, HiF4).

    float16/bfloat16/float32 convert exactly. float64 rounds to nearest-even, and a finite value
    beyond float32's range **saturates** to +-3.4028235e38 (float32's largest finite value)
    instead of becoming +-Inf, which would poison its block: these formats saturate every
    magnitude beyond their largest value, so a float64 1e39 quantizes as float32's max does
    (HiF4: to +-344064, NVFP4: to the block's largest value). +-Inf and NaN stay as they are.
    """
    if x.dtype == torch.float64:
        x = torch.where(torch.isinf(x), x, x.clamp(-F32_MAX, F32_MAX))
    return x.to(torch.float32)


@dataclass(frozen=True)
class Blocking:
    """How a tensor of ``shape`` was cut into blocks; ``unblock`` undoes ``block``."""

    shape: tuple[int, ...]
    axis: int                 # normalized; for 2D tiles, the second of the two tiled axes
    block: tuple[int, ...]    # (b,) along ``axis`` or (br, bc) tiles on (axis-1, axis)
    padded: tuple[int, ...]   # the padded extents of the blocked axes

    @property
    def block_numel(self) -> int:
        return math.prod(self.block)

    def unblock(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of :func:`to_blocks`: drop the padding and restore the original layout."""
        if len(self.block) == 1:
            moved = list(self.shape)
            moved.append(moved.pop(self.axis))
            moved[-1] = self.padded[0]
            y = blocks.reshape(moved)[..., : self.shape[self.axis]]
            return y.movedim(-1, self.axis)
        (br, bc), (pr, pc) = self.block, self.padded
        lead = self.shape[:-2]
        y = blocks.reshape(*lead, pr // br, pc // bc, br, bc).transpose(-3, -2)
        y = y.reshape(*lead, pr, pc)
        return y[..., : self.shape[-2], : self.shape[-1]]


def normalize_axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"block axis {axis} is out of range for a tensor with {ndim} dimension(s)")
    return axis % ndim


def to_blocks(x: torch.Tensor, block: tuple[int, ...], axis: int = -1,
              pad: bool = True) -> tuple[torch.Tensor, Blocking]:
    """Return ``(blocks, blocking)`` with ``blocks`` of shape ``(nblocks, prod(block))``.

    1D blocks run along ``axis``. 2D tiles ``(br, bc)`` cover the last two dimensions (weights).
    A length that is not a multiple of the block is zero-padded (``pad=True``) or refused.
    """
    check_blockable(x.shape, block, axis, pad)
    if len(block) == 1:
        ax = normalize_axis(axis, x.ndim)
        n, b = x.shape[ax], block[0]
        padded = -(-n // b) * b
        y = x.movedim(ax, -1)
        if padded != n:
            y = F.pad(y, (0, padded - n))
        return y.reshape(-1, b), Blocking(tuple(x.shape), ax, (b,), (padded,))
    (br, bc), (r, c) = block, x.shape[-2:]
    pr, pc = -(-r // br) * br, -(-c // bc) * bc
    y = F.pad(x, (0, pc - c, 0, pr - r)) if (pr, pc) != (r, c) else x
    lead = x.shape[:-2]
    y = y.reshape(*lead, pr // br, br, pc // bc, bc).transpose(-3, -2)
    return y.reshape(-1, br * bc), Blocking(tuple(x.shape), x.ndim - 1, (br, bc), (pr, pc))


def check_blockable(shape, block: tuple[int, ...], axis: int = -1, pad: bool = True) -> None:
    """Raise the error :func:`to_blocks` would raise for a tensor of ``shape``, without work.

    Raises:
        ValueError: a 0-d tensor; 2D tiles on fewer than 2 dimensions; ``axis`` out of range; a
            length that is not a multiple of the block with ``pad=False``.
        TypeError: ``axis`` is not an int.
    """
    shape = tuple(shape)
    if not shape:
        raise ValueError("block formats need a tensor with at least one dimension, got a 0-d "
                         "tensor (one value has no block axis); reshape it, e.g. x.reshape(1)")
    if len(block) == 1:
        ax = normalize_axis(axis, len(shape))
        n, b = shape[ax], block[0]
        _check_pad(n, b, -(-n // b) * b, pad, f"axis {axis} (length {n})")
        return
    if len(shape) < 2:
        raise ValueError(f"2D tiles {block} need a tensor with at least 2 dimensions, got shape {shape}")
    (br, bc), (r, c) = block, shape[-2:]
    _check_pad(r, br, -(-r // br) * br, pad, f"rows (length {r})")
    _check_pad(c, bc, -(-c // bc) * bc, pad, f"columns (length {c})")


def _check_pad(n: int, b: int, padded: int, pad: bool, what: str) -> None:
    if padded != n and not pad:
        raise ValueError(f"{what} is not a multiple of the block size {b} and padding is "
                         f"disabled (pad=False); pad it to {padded} or allow padding")
