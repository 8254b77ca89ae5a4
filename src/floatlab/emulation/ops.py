"""Which PyTorch operations :class:`~floatlab.emulation.Emulation` rounds, and how.

Every ATen operation that reaches the emulation is sorted into one :class:`Kind` by its name
(the schema name without ``aten::`` and without the trailing ``_`` of an in-place variant).
Operations not named here are :attr:`Kind.ELEMENTWISE`: computed in the working precision and
every floating output rounded once. Operations without floating outputs (comparisons, indices,
integer arithmetic) are never touched. The table is printed by :func:`describe` and in
``docs/numerics.md``.
"""

from __future__ import annotations

import enum
from functools import lru_cache

import torch


class Kind(str, enum.Enum):
    """How one operation is treated inside :func:`floatlab.emulate`."""

    MOVE = "move"                # output values are input values: passed through unrounded
    SOURCE = "source"            # factories, fills, random draws: the program's own values
    CONVERT = "convert"          # dtype conversion: rounded only when it narrows
    ELEMENTWISE = "elementwise"  # working precision, each floating output rounded once
    REDUCTION = "reduction"      # rounded once, or every partial sum (reductions="accumulator")
    CONTRACTION = "contraction"  # matrix products: rounded once, or through the accumulator
    CONVOLUTION = "convolution"  # rounded once (the accumulator does not apply)
    FUSED = "fused"              # decomposed into rounded primitives (fused="decompose")
    LINALG = "linalg"            # LAPACK in working precision, outputs rounded once (or refused)

    def __str__(self) -> str:
        return self.value


_MOVE = {
    # views and reshapes
    "view", "_unsafe_view", "view_as", "reshape", "_reshape_alias", "t", "transpose", "permute",
    "expand", "expand_as", "squeeze", "unsqueeze", "flatten", "unflatten", "movedim", "swapaxes",
    "alias", "detach", "lift_fresh", "lift_fresh_copy", "contiguous", "as_strided", "clone",
    "_to_dense", "resize", "resize_as",
    # indexing, gathering, assembling
    "slice", "select", "narrow", "index", "_unsafe_index", "index_select", "gather", "take",
    "masked_select", "index_put", "_index_put_impl", "masked_fill", "masked_scatter", "where",
    "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter", "cat", "stack",
    "hstack", "vstack", "split", "split_with_sizes", "unsafe_split", "chunk", "unbind", "flip",
    "roll", "repeat", "repeat_interleave", "tile", "diagonal", "diag", "diag_embed", "tril",
    "triu", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
    "replication_pad1d", "replication_pad2d", "replication_pad3d", "embedding", "unfold",
    "im2col", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "lu_unpack",
    # primitives that PyTorch's decompositions emit
    "broadcast_in_dim", "collapse_view", "collapse", "split_dim", "view_of", "slice_in_dim",
    "expand_dims", "rev",
    # selections: every output value is one of the inputs
    "max", "min", "amax", "amin", "aminmax", "sort", "topk", "kthvalue", "msort", "median",
    "nanmedian", "cummax", "cummin", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "max_unpool2d", "max_unpool3d",
}
# "scatter" moves values unless it reduces (its "reduce"/"value_reduce" overloads)
_MOVE_UNLESS_REDUCE = {"scatter"}

_SOURCE = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros",
    "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full",
    "fill", "zero", "arange", "linspace", "logspace", "eye", "scalar_tensor", "rand", "rand_like",
    "randn", "randn_like", "randint", "randint_like", "randperm", "normal", "uniform",
    "bernoulli", "exponential", "geometric", "cauchy", "log_normal", "random", "multinomial",
    "_local_scalar_dense", "set", "tensor", "_efficientzerotensor",
}

_CONVERT = {"_to_copy", "copy", "to", "_to_dtype", "convert_element_type", "type_as"}

_REDUCTION = {"sum", "mean", "nansum", "nanmean", "cumsum", "prod", "cumprod", "trace"}
ACCUMULATED_REDUCTIONS = {"sum", "mean", "nansum", "cumsum"}

_CONTRACTION = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot"}

_FUSED = {
    "_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
    "native_layer_norm", "native_layer_norm_backward", "native_batch_norm",
    "native_batch_norm_backward", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
    "_native_batch_norm_legit_no_training", "native_group_norm", "native_group_norm_backward",
    "_fused_rms_norm", "var", "std", "var_mean", "std_mean", "logsumexp", "logcumsumexp",
    "addcmul", "addcdiv", "lerp", "addr", "_addmm_activation", "mse_loss", "mse_loss_backward",
    "l1_loss", "smooth_l1_loss", "smooth_l1_loss_backward", "huber_loss", "huber_loss_backward",
    "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
    "binary_cross_entropy", "binary_cross_entropy_backward", "binary_cross_entropy_with_logits",
    "kl_div", "soft_margin_loss", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_attention_math",
    "linalg_vector_norm", "norm", "frobenius_norm", "native_dropout", "native_dropout_backward",
    "glu", "glu_backward", "_euclidean_dist", "_cdist_forward", "cosine_similarity",
}

_LINALG_EXTRA = {
    "cholesky", "cholesky_solve", "cholesky_inverse", "triangular_solve", "lu_solve",
    "_lu_with_info", "geqrf", "ormqr", "orgqr", "inverse", "det", "logdet", "slogdet", "svd",
    "_svd_helper", "symeig", "eig", "matrix_exp", "matrix_exp_backward",
}
_NOT_LINALG = {"linalg_vector_norm", "linalg_cross"}

# ops whose working-precision result rounds correctly when the working precision has at least
# 2p + 2 significant bits (innocuous double rounding: +, -, *, /, sqrt; the rest are exact)
BASIC = {"add", "sub", "rsub", "mul", "div", "sqrt", "reciprocal", "neg", "abs", "relu",
         "clamp", "clamp_min", "clamp_max", "hardtanh", "maximum", "minimum", "fmax", "fmin",
         "threshold_backward", "square"}


# elementwise library functions: under working="auto" they run in float32 with a check that the
# result lies far enough from every rounding boundary (else float64); see mode._verified
TRANSCENDENTAL = {
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan", "asin", "acos",
    "atan", "atan2", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "sigmoid", "erf", "erfc",
    "erfinv", "silu", "softplus", "elu", "selu", "celu", "rsqrt", "pow", "hardswish",
    "hardsigmoid", "leaky_relu", "xlogy",
}
# not here, found inaccurate in float32 by tests/test_emulation.py (cancellation): gelu (x << 0),
# mish, logit, sinc; nor the backward formulas (1 - y^2 and the like)


def base_name(func) -> str:
    """``aten::add_`` -> ``add``; ``prims::convert_element_type`` -> ``convert_element_type``."""
    name = func._schema.name.split("::", 1)[-1]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def is_inplace(func) -> bool:
    name = func._schema.name.split("::", 1)[-1]
    return name.endswith("_") and not name.endswith("__")


@lru_cache(maxsize=None)
def classify(func) -> Kind:
    """The :class:`Kind` of an ATen ``OpOverload``."""
    name = base_name(func)
    if name in _MOVE or (name in _MOVE_UNLESS_REDUCE and "reduce" not in func._overloadname):
        return Kind.MOVE
    if name in _SOURCE:
        return Kind.SOURCE
    if name in _CONVERT:
        return Kind.CONVERT
    if name in _FUSED:
        return Kind.FUSED
    if name in _REDUCTION:
        return Kind.REDUCTION
    if name in _CONTRACTION:
        return Kind.CONTRACTION
    if "conv" in name and "convert" not in name:
        return Kind.CONVOLUTION
    if name not in _NOT_LINALG and (name.startswith(("linalg_", "_linalg_")) or name in _LINALG_EXTRA):
        return Kind.LINALG
    return Kind.ELEMENTWISE


def functional_variant(func):
    """The out-of-place overload of an in-place op (``add_.Tensor`` -> ``add.Tensor``), or None."""
    if not is_inplace(func):
        return None
    ns = getattr(torch.ops, func.namespace)
    packet = getattr(ns, base_name(func), None)
    return None if packet is None else getattr(packet, func._overloadname, None)


def describe() -> list[tuple[str, str, str]]:
    """``(kind, how it is rounded, example ops)`` rows: the table of ``docs/numerics.md``."""
    ex = lambda names: ", ".join(sorted(names)[:12]) + (", ..." if len(names) > 12 else "")  # noqa: E731
    return [
        (str(Kind.ELEMENTWISE), "computed in the working precision, each floating output rounded once "
         "(also every op not listed elsewhere, activations such as gelu/silu/tanh and their backward)",
         "add, sub, mul, div, sqrt, exp, log, pow, tanh, sigmoid, gelu, silu, abs, neg, relu, clamp"),
        (str(Kind.REDUCTION), "result rounded once from a float64 reduction (reductions='result'); or "
         "every partial sum rounded in the accumulator (reductions='accumulator': sum, mean, nansum, "
         "cumsum; prod, cumprod, trace stay result-only)", ex(_REDUCTION)),
        (str(Kind.CONTRACTION), "accumulator=None: exact products summed in float64, result rounded once; "
         "with an accumulator: K-chunks of exact products, running sum rounded into the accumulator "
         "format in the chosen order, then rounded into the format; addmm/baddbmm/addmv add the bias "
         "with one more rounding", ex(_CONTRACTION)),
        (str(Kind.CONVOLUTION), "result rounded once (accumulator not applied)", "convolution, "
         "convolution_backward"),
        (str(Kind.FUSED), "fused='decompose': run as PyTorch's decomposition, every primitive rounded; "
         "fused='result' (or no decomposition available): rounded once", ex(_FUSED)),
        (str(Kind.LINALG), "linalg='result': LAPACK in the working precision, each floating output "
         "rounded once (no intermediate is rounded: use floatlab.linalg for LU with every operation "
         "rounded); linalg='refuse': EmulationError", ex({"linalg_*", *_LINALG_EXTRA})),
        (str(Kind.CONVERT), "rounded only when the target dtype cannot hold every source value", ex(_CONVERT)),
        (str(Kind.MOVE), "passed through: every output value is an input value (views, indexing, "
         "cat, where, max/min, sort, ...)", ex(_MOVE)),
        (str(Kind.SOURCE), "passed through (round_inputs=True rounds them where they are used)", ex(_SOURCE)),
    ]
