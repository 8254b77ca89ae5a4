"""The public entry points: ``quantize``, ``encode``, ``decode``.

One entry point per job for every format, scalar or block: the format object decides which
core runs. Input validation lives here, so every core can assume clean arguments.
"""

from __future__ import annotations

import torch

from floatlab.formats.block import BlockFormat
from floatlab.formats.registry import get_format
from floatlab.kernels import codes as fast_codes
from floatlab.kernels import dispatch
from floatlab.kernels.block import quantize_block
from floatlab.ops.autograd import check_grad, straight_through
from floatlab.plain.block import block_decode, block_encode, block_quantize
from floatlab.plain.scalar import quantize_to_float64
from floatlab.rounding import check_flag, check_generator, resolve_rounding
from floatlab.tensor.qtensor import QTensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BLOCK_OPTIONS = ("axis", "pad")


def _check_input(x, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{what} has dtype {x.dtype}; floatlab quantizes floating tensors only "
            "(float16, bfloat16, float32, float64). Convert integers with x.float() first.")



def quantize(x: torch.Tensor, fmt, rounding=None, saturate: bool | None = None,
             generator: torch.Generator | None = None, sr_bits: int | None = None,
             *, out: torch.Tensor | None = None, backend: str | None = None,
             grad: str = "ste", **block_options) -> torch.Tensor:
    """Fake-quantize ``x`` into ``fmt``: round every value to the format, return the same dtype.

    Args:
        x: float16, bfloat16, float32 or float64 tensor (any shape, any device).
        fmt: a format name (``"e4m3"``, ``"hif8"``, ``"mxfp4"``, ``"int8"``, a spelled ``"e6m9"``,
            ...; case-insensitive, see :func:`floatlab.list_formats`) or a format object.
        rounding: a :class:`~floatlab.RoundingMode` or its name. ``None`` takes the format's
            default: ties-to-even (``"rne"``) everywhere except hif8 and hif4, whose default is
            ties-away (``"rna"``), as their reference casts. In block formats the mode rounds the
            elements; scales follow the format's scale rule.
        saturate: clamp overflow to +-max. ``None`` keeps the format's own conversion semantics
            (e4m3: NaN, e5m2/fp16/bf16/hif8: Inf, FP6/FP4/int: saturate). Block formats always
            clamp elements to the element range (OCP MX); ``saturate=False`` is refused there.
        generator: a ``torch.Generator`` for the stochastic modes (reproducible draws), on
            ``x``'s device type. The deterministic modes neither draw from it nor advance it (so
            one generator can be passed through a sweep over modes).
        sr_bits: with ``rounding="sr"``, the number of random bits (1..52); ``None`` draws the
            exact probability.
        out: a preallocated tensor of ``x``'s shape, dtype and device to write the result into
            (returned); saves the allocation (page faults dominate a fresh 64 MB output).
        backend: ``"auto"`` (default: the native C++ kernel for float32 CPU tensors in a float
            format with rne/rna/rnz/sr/sr_half or in a block format with the MX, NVFP4 or HiF4
            rule (mxfp4, nvfp4, hif4, ...; every mode), else the fused compiled kernel where it
            applies, else the plain path), ``"compiled"``, ``"eager"`` (the fused kernel without a
            compiler), ``"native"`` (the native kernels only) or ``"plain"`` (the reference
            path). ``None`` reads ``FLOATLAB_FAST`` (``0`` = plain).
            All return the same bits; with ``generator=None`` the stochastic modes of the fast
            path draw from an in-kernel hash instead of ``torch.rand`` (see
            :mod:`floatlab.kernels.dispatch`); pass a generator for draws identical to the plain
            path. The first call of a format on a tensor of 65,536 or more elements compiles its
            kernel (a few seconds once per process, about 10 s with a cold cache).
        grad: the gradient with respect to ``x`` when ``x.requires_grad`` (see
            :mod:`floatlab.ops.autograd`): ``"ste"`` (default) straight-through, ``dL/dx =
            dL/dy``; ``"clipped"`` straight-through inside the format's range (per element of its
            block for block formats), zero outside and at NaN/Inf; ``"none"`` a detached result.
            The same for every format, mode and backend.
        axis: block formats only (keyword): the axis the blocks run along (default ``-1``). 2D
            tiles such as ``nvfp4_2d``'s 16x16 always cover the last two dimensions.
        pad: block formats only (keyword, default ``True``): a length that is not a multiple of
            the block is zero-padded for the scale computation and the padding dropped from the
            result; ``False`` refuses such a length instead.

    Returns:
        A tensor of ``x``'s dtype and shape. If the format holds values that ``x``'s dtype cannot
        (e.g. fp16 values in a bfloat16 tensor), the final cast rounds them to nearest-even.

    Raises:
        TypeError: ``x`` is not a floating tensor; options of the wrong kind (``axis`` for a
            scalar format, an unknown option for a block format); a bad ``generator`` or ``out``.
        ValueError: an unknown format (with the closest names) or rounding mode; a mode the
            format does not define (``hybrid`` outside hif8); ``sr_bits`` outside 1..52 or without
            ``rounding="sr"``; ``saturate=False`` for a block format; a block axis out of range
            or a length that is not a multiple of the block with ``pad=False``; ``out=`` when a
            gradient must be recorded; a bad ``grad`` or ``backend``.
        FastPathUnsupported: ``backend="compiled"``, ``"eager"`` or ``"native"`` for a case
            those kernels do not cover (``"auto"`` falls back to the plain path instead).

    Example:
        >>> import torch, floatlab
        >>> floatlab.quantize(torch.tensor([1.0625, 300.0, 1000.0]), "e4m3")
        tensor([  1., 288.,  nan])
        >>> floatlab.quantize(torch.tensor([1.0625]), "hif8")  # ties away
        tensor([1.1250])
        >>> x = torch.tensor([0.3, 9.0], requires_grad=True)
        >>> floatlab.quantize(x, "int4", grad="clipped").sum().backward(); x.grad
        tensor([1., 0.])
    """
    _check_input(x)
    _check_out(out, x)
    grad = check_grad(grad)
    saturate = check_flag(saturate, "saturate", optional=True)
    backend = dispatch.resolve_backend(backend)
    spec = get_format(fmt)
    if isinstance(spec, BlockFormat):
        mode, axis, pad = _block_args(spec, rounding, saturate, sr_bits, block_options)
    else:
        _reject_block_options(spec, block_options)
        mode = resolve_rounding(spec, rounding, sr_bits)
    check_generator(generator, x.device)
    if x.requires_grad and torch.is_grad_enabled() and grad != "none":
        if out is not None:
            raise ValueError("out= cannot record a gradient: x requires grad. Call quantize without "
                             "out=, or pass x.detach() (or grad='none') for no gradient")
    if isinstance(spec, BlockFormat):
        def values(v):
            y = quantize_block(v, spec, mode, generator, sr_bits, out, backend, axis, pad)
            if y is None:
                y = block_quantize(v, spec, mode, generator, sr_bits, axis, pad)
                return y if out is None else out.copy_(y)
            return y

        def clipped(v):
            codes, scales, meta = block_encode(v, spec, mode, generator, sr_bits, axis, pad)
            top = block_decode(torch.full_like(codes, spec.element.max_code), scales, spec, v.shape, meta)
            y = block_decode(codes, scales, spec, v.shape, meta).to(v.dtype)
            return y, v.abs().to(top.dtype) <= top
    else:
        def values(v):
            y = dispatch.quantize_scalar(v, spec, mode, bool(saturate), generator, sr_bits, out, backend)
            if y is None:
                y = quantize_to_float64(v, spec, mode, bool(saturate), generator, sr_bits).to(v.dtype)
                return y if out is None else out.copy_(y)
            return y

        def clipped(v):
            return values(v), (v >= -spec.max_negative) & (v <= spec.max_value)
    return straight_through(x, values, grad, clipped)


def _check_out(out, x: torch.Tensor) -> None:
    if out is None:
        return
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must match x in shape, dtype and device: out is "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}, x is "
                         f"{tuple(x.shape)} {x.dtype} on {x.device}")


def _reject_block_options(spec, options) -> None:
    if options:
        raise TypeError(f"{spec.name!r} is a scalar format: unexpected options "
                        f"{', '.join(sorted(options))} (axis/block options apply to block formats)")


def _block_args(spec: BlockFormat, rounding, saturate, sr_bits, options: dict):
    """Validated ``(mode, axis, pad)`` of a block-format call."""
    unknown = sorted(set(options) - set(_BLOCK_OPTIONS))
    if unknown:
        raise TypeError(f"{spec.name!r}: unexpected options {', '.join(unknown)} "
                        f"(block formats take {', '.join(_BLOCK_OPTIONS)})")
    mode = resolve_rounding(spec, rounding, sr_bits)
    if saturate is False:
        raise ValueError(f"{spec.name!r}: block formats always clamp elements to the element "
                         "range (saturate=False is not available)")
    return mode, options.get("axis", -1), check_flag(options.get("pad", True), "pad")


def encode(x: torch.Tensor, fmt, rounding=None, saturate: bool | None = None,
           generator: torch.Generator | None = None, sr_bits: int | None = None,
           *, backend: str | None = None, **block_options) -> QTensor:
    """Quantize ``x`` into ``fmt`` and return the codes as a :class:`~floatlab.QTensor`.

    Takes the arguments of :func:`quantize` (``axis``/``pad`` for block formats; no ``out``).
    ``backend`` as there: the fast path (:mod:`floatlab.kernels.codes`) rounds with the fused
    kernels and reads the codes off the rounded bits, packing 4-bit codes in the same kernel;
    ``"plain"`` runs the float64 reference. Both give the same codes and scales (tested); the
    stochastic modes without a generator always run the plain path, so their draws stay
    ``torch.rand``'s. ``encode(x, fmt).codes`` is an integer
    tensor of codes (``uint8`` for formats of 8 bits or fewer); the QTensor records ``x``'s
    dtype, so ``decode(encode(x, fmt))`` equals ``quantize(x, fmt)`` bit for bit, in ``x``'s
    dtype and shape (empty tensors included; scalar formats take 0-d tensors too).

    Raises:
        ValueError: a NaN input to a format without a NaN code (it has no code to go to); the
            errors of :func:`quantize` (unknown format or mode, a 0-d tensor or bad axis for a
            block format, ...).
        TypeError: as :func:`quantize`.
    """
    _check_input(x)
    saturate = check_flag(saturate, "saturate", optional=True)
    backend = dispatch.resolve_backend(backend)
    backend = "auto" if backend == "native" else backend   # codes: no native kernel of their own
    spec = get_format(fmt)
    if isinstance(spec, BlockFormat):
        mode, axis, pad = _block_args(spec, rounding, saturate, sr_bits, block_options)
        check_generator(generator, x.device)
        fast = fast_codes.encode_block(x, spec, mode, generator, sr_bits, backend, axis, pad)
        if fast is not None:
            data, scales, meta = fast
            return QTensor(data, spec, tuple(x.shape), x.dtype, scales, meta)
        codes, scales, meta = block_encode(x, spec, mode, generator, sr_bits, axis, pad)
        return QTensor.from_codes(codes, spec, dtype=x.dtype, scales=scales, meta=meta, shape=x.shape)
    _reject_block_options(spec, block_options)
    mode = resolve_rounding(spec, rounding, sr_bits)
    check_generator(generator, x.device)
    data = fast_codes.encode_scalar(x, spec, mode, bool(saturate), generator, sr_bits, backend)
    if data is not None:
        return QTensor(data, spec, tuple(x.shape), x.dtype)
    q = quantize_to_float64(x, spec, mode, bool(saturate), generator, sr_bits)
    if not spec.has_nan and bool(torch.isnan(q).any()):
        raise ValueError(f"format {spec.name!r} has no NaN code, but the input holds NaN "
                         f"({int(torch.isnan(x).sum())} values); fake-quantize with "
                         "floatlab.quantize keeps NaN, encode cannot")
    codes = spec.encode(q).to(spec.code_dtype)
    return QTensor.from_codes(codes, spec, dtype=x.dtype)


def decode(codes, fmt=None, dtype: torch.dtype | None = None, *,
           backend: str | None = None) -> torch.Tensor:
    """Values of ``codes`` in ``fmt`` as a ``dtype`` tensor.

    Args:
        codes: a :class:`~floatlab.QTensor` (``fmt`` optional) or an integer tensor of codes of a
            scalar format (``fmt`` required; any integer dtype, a signed container of the
            format's width holding the bit pattern is read as unsigned).
        fmt: the format (name or object); for a QTensor, it must match the stored one.
        dtype: float16, bfloat16, float32 or float64. ``None`` (default): a QTensor's stored
            dtype, the dtype that was encoded, so ``decode(encode(x, fmt))`` equals
            ``quantize(x, fmt)`` bit for bit in ``x``'s dtype; float32 for raw integer codes.

    Returns:
        A tensor of the QTensor's logical shape (``codes.shape`` for integer codes).

    Raises:
        TypeError: ``codes`` is neither a QTensor nor an integer tensor; ``fmt`` missing for
            integer codes; a block format with integer codes (decode its QTensor); a ``dtype``
            that is not a floating dtype floatlab returns.
        ValueError: codes out of the format's range; a ``fmt`` that differs from the QTensor's.
    """
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(map(str, FLOAT_DTYPES))} (or None for "
                        f"the encoded dtype), got {dtype}")
    if isinstance(codes, QTensor):
        if fmt is not None and get_format(fmt) != codes.format:
            raise ValueError(f"QTensor holds {codes.format.name!r}, not {get_format(fmt).name!r}: leave fmt "
                             f"out (a QTensor knows its format) or pass {codes.format.name!r}")
        return codes.dequantize(dtype, backend=backend)
    if fmt is None:
        raise TypeError("decode(codes, fmt): fmt is required unless codes is a QTensor")
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise TypeError("codes must be an integer torch.Tensor of format codes (or a QTensor)")
    spec = get_format(fmt)
    if isinstance(spec, BlockFormat):
        raise TypeError(f"{spec.name!r} is a block format: decode its QTensor (from encode)")
    c = spec.codes_from(codes)  # int64 patterns; ValueError for codes out of range
    out_dtype = torch.float32 if dtype is None else dtype
    if spec.bits <= 8 and dispatch.resolve_backend(backend) != "plain":
        return fast_codes.scalar_table(spec, out_dtype, c.device)[c]   # the plain decoder's values
    return spec.decode(c).to(out_dtype)
