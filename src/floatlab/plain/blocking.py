"""Reshape a tensor into blocks along any axis (or into 2D tiles), with zero padding, and back.

Every block format uses this one helper: the scale rule then sees a ``(nblocks, block)`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    if x.ndim == 0:
        raise ValueError("block formats need a tensor with at least one dimension")
    if len(block) == 1:
        ax = normalize_axis(axis, x.ndim)
        n, b = x.shape[ax], block[0]
        padded = -(-n // b) * b
        _check_pad(n, b, padded, pad, f"axis {axis} (length {n})")
        y = x.movedim(ax, -1)
        if padded != n:
            y = F.pad(y, (0, padded - n))
        return y.reshape(-1, b), Blocking(tuple(x.shape), ax, (b,), (padded,))
    if x.ndim < 2:
        raise ValueError(f"2D tiles {block} need a tensor with at least 2 dimensions, got shape {tuple(x.shape)}")
    (br, bc), (r, c) = block, x.shape[-2:]
    pr, pc = -(-r // br) * br, -(-c // bc) * bc
    _check_pad(r, br, pr, pad, f"rows (length {r})")
    _check_pad(c, bc, pc, pad, f"columns (length {c})")
    y = F.pad(x, (0, pc - c, 0, pr - r)) if (pr, pc) != (r, c) else x
    lead = x.shape[:-2]
    y = y.reshape(*lead, pr // br, br, pc // bc, bc).transpose(-3, -2)
    return y.reshape(-1, br * bc), Blocking(tuple(x.shape), x.ndim - 1, (br, bc), (pr, pc))


def _check_pad(n: int, b: int, padded: int, pad: bool, what: str) -> None:
    if padded != n and not pad:
        raise ValueError(f"{what} is not a multiple of the block size {b} and padding is "
                         f"disabled (pad=False); pad it to {padded} or allow padding")
