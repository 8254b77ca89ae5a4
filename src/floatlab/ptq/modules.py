"""A quantized linear layer that replaces a model's own ``nn.Linear`` modules (no patching of
torch itself): its weight is fake-quantized once, its input is optionally transformed (online
Hadamard) and fake-quantized in every forward pass."""

from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

from floatlab.ptq.quantizer import QuantSpec, fake_quant


class QuantLinear(nn.Module):
    """``y = q_a(T(x)) @ W_q^T + b``.

    Args:
        linear: the layer it replaces (its weight is read, not kept).
        weight_q: the already quantized weight (RTN, GPTQ, ...), same shape as ``linear.weight``.
        w_spec / a_spec: the weight and activation specs (``a_spec=None``: weight-only).
        input_transform: an optional module applied to the input first (e.g. the online
            Hadamard rotation of QuaRot on ``down_proj``); the weight must already hold its
            inverse.
        packed: instead of ``weight_q`` (pass ``None``), the :class:`floatlab.ptq.weights.QWeight`
            record of the quantized weight (packed codes and scales, :meth:`QWeight.drop_dense`
            done): the layer keeps only that (1 byte or half a byte per value plus scales,
            instead of 4) and decodes it in every forward pass (:meth:`QWeight.decode`);
            ``layer.weight`` is then that decoded float32 tensor, a new one on each access, and
            not a parameter (``state_dict`` has no ``weight`` for the layer). The caller checks
            that the decode equals the weight it would otherwise pass
            (:func:`floatlab.ptq.apply.quantize_model` with ``packed=True`` does, bit for bit).
    """

    def __init__(self, linear: nn.Linear, weight_q: torch.Tensor | None, w_spec: QuantSpec | None,
                 a_spec: QuantSpec | None, input_transform: nn.Module | None = None, *, packed=None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if (packed is None) == (weight_q is None):
            raise ValueError("QuantLinear takes either weight_q (a dense weight) or packed (a QWeight), not both")
        self.packed = packed
        if packed is None:
            self.weight = nn.Parameter(weight_q.detach().to(linear.weight.dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.w_spec, self.a_spec = w_spec, a_spec
        self.input_transform = input_transform

    # The last activation quantized by any QuantLinear: layers that read the same input tensor
    # one after the other (q, k, v) quantize it once. The entry holds the input itself, so the
    # identity test cannot match a different tensor that reuses its memory.
    _shared: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.a_spec is not None:
            hit = QuantLinear._shared
            if self.input_transform is None and hit is not None and hit[0] is x and hit[1] == x._version \
                    and hit[2] == self.a_spec:
                x = hit[3]
            else:
                xq = fake_quant(x, self.a_spec, "act")
                QuantLinear._shared = (x, x._version, self.a_spec, xq) if self.input_transform is None else None
                x = xq
        return F.linear(x, self.weight, self.bias)

    def __getattr__(self, name: str):
        if name == "weight":                   # a packed layer: its weight decoded now
            packed = self.__dict__.get("packed")
            if packed is not None:
                return packed.decode()
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w={self.w_spec}, a={self.a_spec}, "
                f"transform={type(self.input_transform).__name__ if self.input_transform else None}"
                + (", packed" if self.packed is not None else ""))


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted path) of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def spec_for(name: str, default: QuantSpec | None, overrides: dict[str, QuantSpec | None] | None):
    """The spec of layer ``name``: the last override whose glob pattern matches, else ``default``.

    Patterns match the dotted module name (``"*.mlp.down_proj"``, ``"encoder.layer.0.*"``)."""
    spec = default
    for pattern, s in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            spec = s
    return spec
