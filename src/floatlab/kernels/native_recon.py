"""Native kernels for the element-wise weight steps of block-wise reconstruction (issue 14's cost
goal): OmniQuant's learnable weight clipping on an asymmetric integer grid and PTQ1.61's
binarized weight with a rank-1 factor, forward and backward, each one pass over the weight
(``native_recon.cpp``).

In torch these steps are 6-10 element-wise passes over every weight per training step, forward
and backward, about as long as the block's matmuls on a 2-core machine; here each is one pass,
and the backward recomputes what it needs from the inputs instead of reading saved tensors.

* Values are those of the torch expressions, bit for bit (the same float32 operations in the
  same order, compiled with ``-ffp-contract=off``; rounding ties to even as ``torch.round``).
* Gradients are computed in float64 (sums in 8 lanes of fixed order, one rounding to float32
  at the end), where torch forms float32 products and sums them in float32 in an order of its
  own: they agree with torch's to float32 rounding of the sums, not bit for bit, and they do not
  depend on the thread count. The backward needs one division per weight (LWC: ``w / s`` to
  find the rounding; the straight-through term ``-(w / s) / s`` times ``s`` is ``-w / s``, summed
  over the group and divided once) and none for PTQ1.61 (sums of ``grad * r2`` over the +1 and the
  -1 signs of a row give both row gradients).
* The signs of PTQ1.61 and its column mask are bits (:func:`pack_bits`), 1/32 of the float32
  signs' memory traffic.

Built on first use with :mod:`floatlab.kernels.native`'s helpers; where it cannot be built or
``FLOATLAB_NATIVE=0``, :func:`available` is False and the callers
(:class:`floatlab.ptq.lwc.AffineFakeQuant`, :class:`floatlab.ptq.ptq161.RankOneBinary`) run their
torch steps instead.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from floatlab.kernels import native

SOURCE = Path(__file__).with_name("native_recon.cpp")
FLAGS = (*native.FLAGS, "-fno-trapping-math")        # no value changes
MIN_ELEMENTS_PER_THREAD = 1 << 16                     # smaller calls run on the calling thread
ROWS_PER_SUM = 64            # rank-1 backward: one float64 row of column sums per 64 weight rows
_lock = threading.Lock()
_state: dict[str, object] = {}
_P, _N, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "floatlab_affine_fq_forward": ([_P, _P, _P, _N, _N, _F, _P], None),
    "floatlab_affine_fq_backward": ([_P, _P, _P, _P, _N, _N, _F, _P], None),
    "floatlab_rank1_binary_forward": ([_P] * 7 + [_N, _N, _P], None),
    "floatlab_rank1_binary_backward": ([_P] * 7 + [_N, _N, _N, _P, _P, _P], None),
}


def library() -> ctypes.CDLL | None:
    """The loaded library (built on first use), or None where it is unavailable."""
    return native.loaded_once(_state, _lock, lambda: native.build_and_load(
        SOURCE, "floatlab_recon", FLAGS, "native reconstruction kernel", _SIGNATURES, 7,
        instead="the torch weight steps"))


def available() -> bool:
    return library() is not None


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels can take these arguments: float32 contiguous CPU tensors (None skipped),
    outside ``torch.compile`` tracing, with the library built."""
    return (not torch.compiler.is_compiling()
            and all(t is None or (t.device.type == "cpu" and t.dtype is torch.float32 and t.is_contiguous())
                    for t in tensors)
            and available())


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the native reconstruction kernel is not available (check available())")
    return lib


def _slices(units: int, per_unit: int, align: int = 1) -> list[tuple[int, int]]:
    """``(start, count)`` slices of ``units`` rows for the threads (one where the work is small),
    starting at multiples of ``align``."""
    threads = max(1, min(torch.get_num_threads(), units * per_unit // MIN_ELEMENTS_PER_THREAD, units))
    per_thread = -(-units // threads)
    step = -(-per_thread // align) * align
    return [(s, min(step, units - s)) for s in range(0, units, step)]


def _run(fn, slices, args_of) -> None:
    """``fn`` on each slice: the first on the calling thread, the others in worker threads."""
    futures = [native._pool(len(slices) - 1).submit(fn, *args_of(s, c)) for s, c in slices[1:]]
    fn(*args_of(*slices[0]))
    for f in futures:
        f.result()


def _check(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not (t.device.type == "cpu" and t.is_contiguous()):
            raise ValueError(f"native_recon: {name} must be a contiguous CPU tensor")


def affine_fq_forward(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: float) -> torch.Tensor:
    """``(clamp(round(w / s).clamp(-32768, 32767) + z, 0, qmax) - z) * s`` (``torch.round``: ties
    to even), the forward of :class:`floatlab.ptq.lwc.AffineFakeQuant`, bit for bit.

    ``w``: ``(rows, groups, G)`` float32; ``s``, ``z``: ``(rows, groups, 1)`` float32 (``s`` > 0,
    ``z`` integers in ``[0, qmax]``). Returns a new ``(rows, groups, G)`` float32 tensor."""
    _check(w=w, s=s, z=z)
    lib, g = _lib(), w.shape[-1]
    n = w.numel() // g
    out = torch.empty_like(w)
    pw, ps, pz, po = w.data_ptr(), s.data_ptr(), z.data_ptr(), out.data_ptr()
    _run(lib.floatlab_affine_fq_forward, _slices(n, g),
         lambda a, c: (pw + 4 * a * g, ps + 4 * a, pz + 4 * a, c, g, qmax, po + 4 * a * g))
    return out


def affine_fq_backward(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: float,
                       grad: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to ``s`` of ``sum(grad * affine_fq_forward(w, s, z, qmax))`` with
    the clipped straight-through rounding (:class:`floatlab.ptq.lwc.AffineFakeQuant`'s), per
    group: ``sum(grad * qz) + sum((grad * s) * d)``, ``d = -((w / s) / s)`` where the clamp to
    ``[0, qmax]`` passes the gradient and 0 elsewhere. Shapes as :func:`affine_fq_forward`;
    returns ``(rows, groups, 1)`` float32."""
    _check(w=w, s=s, z=z, grad=grad)
    lib, g = _lib(), w.shape[-1]
    n = w.numel() // g
    gs = torch.empty_like(s)
    pw, ps, pz, pg, po = w.data_ptr(), s.data_ptr(), z.data_ptr(), grad.data_ptr(), gs.data_ptr()
    _run(lib.floatlab_affine_fq_backward, _slices(n, g),
         lambda a, c: (pw + 4 * a * g, ps + 4 * a, pz + 4 * a, pg + 4 * a * g, c, g, qmax, po + 4 * a))
    return gs


def pack_bits(b: torch.Tensor) -> torch.Tensor:
    """Bool ``(rows, cols)`` as the kernels' bit rows: ``(rows, ceil(cols / 8))`` uint8, element
    ``j`` in bit ``j % 8`` (least significant first) of byte ``j // 8``."""
    rows, cols = b.shape
    padded = torch.zeros((rows, -(-cols // 8) * 8), dtype=torch.uint8)
    padded[:, :cols] = b
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (padded.view(rows, -1, 8) * weights).sum(-1, dtype=torch.uint8).contiguous()


def rank1_binary_forward(s, r1, r2, c, sign_bits, mask_bits, wide) -> torch.Tensor:
    """``where(mask, wide, r1 * (s * signs + c) * r2)``, the forward of
    :class:`floatlab.ptq.ptq161.RankOneBinary`, bit for bit.

    ``s``, ``r1``, ``c``: ``(rows, 1)`` float32; ``r2``: ``(cols,)`` float32; ``sign_bits``:
    :func:`pack_bits` of ``signs > 0`` (``signs`` +-1, ``(rows, cols)``); ``mask_bits``:
    :func:`pack_bits` of the ``(1, cols)`` column mask and ``wide`` ``(rows, cols)`` float32, or
    both None. Returns a new ``(rows, cols)`` float32 tensor."""
    _check(s=s, r1=r1, r2=r2, c=c, sign_bits=sign_bits, mask_bits=mask_bits, wide=wide)
    lib = _lib()
    rows, cols = s.shape[0], r2.shape[0]
    row_bytes = sign_bits.shape[1]
    out = torch.empty((rows, cols), dtype=torch.float32)
    pm = 0 if mask_bits is None else mask_bits.data_ptr()
    pw = 0 if wide is None else wide.data_ptr()
    ps, p1, p2, pc, pg, po = (t.data_ptr() for t in (s, r1, r2, c, sign_bits, out))
    _run(lib.floatlab_rank1_binary_forward, _slices(rows, cols),
         lambda a, n: (ps + 4 * a, p1 + 4 * a, p2, pc + 4 * a, pg + a * row_bytes, pm,
                       pw and pw + 4 * a * cols, n, cols, po + 4 * a * cols))
    return out


def rank1_binary_backward(s, r1, r2, c, sign_bits, mask_bits, grad) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(g_s (rows, 1), g_r1 (rows, 1), g_r2 (cols,))`` of
    ``sum(grad * rank1_binary_forward(...))`` (nothing flows through the masked columns):
    ``g_s = sum_j grad * r2 * r1 * signs``, ``g_r1 = sum_j (s * signs + c) * grad * r2``,
    ``g_r2 = sum_i r1 * (s * signs + c) * grad``, computed in float64 and rounded once to float32.
    Arguments as :func:`rank1_binary_forward`, ``grad`` ``(rows, cols)`` float32."""
    _check(s=s, r1=r1, r2=r2, c=c, sign_bits=sign_bits, mask_bits=mask_bits, grad=grad)
    lib = _lib()
    rows, cols = grad.shape
    row_bytes = sign_bits.shape[1]
    g_s = torch.empty((rows, 1), dtype=torch.float32)
    g_r1 = torch.empty((rows, 1), dtype=torch.float32)
    slices = _slices(rows, cols, ROWS_PER_SUM)
    acc = torch.zeros((-(-rows // ROWS_PER_SUM), cols), dtype=torch.float64)
    pm = 0 if mask_bits is None else mask_bits.data_ptr()
    ps, p1, p2, pc, pg, pgr, pa, pos, po1 = (t.data_ptr() for t in (s, r1, r2, c, sign_bits, grad, acc, g_s, g_r1))
    _run(lib.floatlab_rank1_binary_backward, slices,
         lambda a, n: (ps + 4 * a, p1 + 4 * a, p2, pc + 4 * a, pg + a * row_bytes, pm, pgr + 4 * a * cols, n, cols,
                       ROWS_PER_SUM, pos + 4 * a, po1 + 4 * a, pa + 8 * cols * (a // ROWS_PER_SUM)))
    return g_s, g_r1, acc.sum(0).to(torch.float32)
