"""``QLinear``, ``QConv1d``, ``QConv2d``: layers whose three GEMMs (fprop, dgrad, wgrad) are
quantized by a :class:`LinearSpec`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from floatlab.nn.functional import GEMMS, ConvGeometry, QuantState, qconv, qlinear
from floatlab.nn.recipe import LinearSpec, Scaling


def _uses_delayed(spec: LinearSpec) -> bool:
    return any(t.scaling is Scaling.DELAYED for g in GEMMS for t in (spec.gemm(g).a, spec.gemm(g).b))


class QLinear(nn.Linear):
    """A drop-in ``nn.Linear`` with quantized fprop, dgrad and wgrad GEMMs.

    State beyond the parameters: the amax history (a buffer, for delayed scaling) and the
    stochastic-rounding generator (saved in ``state_dict`` as extra state), so a checkpoint
    restores the exact random stream.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 spec: LinearSpec, seed: int = 0, amax_history: int = 16,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.spec = spec
        self.seed = int(seed)
        if _uses_delayed(spec):
            self.register_buffer("amax_history", torch.zeros(6, amax_history, device=device))
        else:
            self.amax_history = None
        self.qstate = QuantState(spec, seed=self.seed)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: LinearSpec, seed: int = 0,
                    amax_history: int = 16) -> "QLinear":
        """A QLinear sharing ``linear``'s parameter objects (optimizers keep working)."""
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = linear.in_features, linear.out_features
        q.weight = linear.weight
        q.bias = linear.bias
        q.spec, q.seed = spec, int(seed)
        if _uses_delayed(spec):
            q.register_buffer("amax_history", torch.zeros(6, amax_history, device=linear.weight.device))
        else:
            q.amax_history = None
        q.qstate = QuantState(spec, seed=q.seed)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.qstate.amax_history = self.amax_history
        return qlinear(x, self.weight, self.bias, self.qstate)

    # the generator's state travels with the state_dict
    def get_extra_state(self):
        g = self.qstate.gen(self.weight.device)
        return {"generator": g.get_state()}

    def set_extra_state(self, state) -> None:
        if state and "generator" in state:
            self.qstate.gen(self.weight.device).set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


class _QConvMixin:
    """What QConv1d and QConv2d share: the quantization state and its checkpointing."""

    def _setup(self, spec: LinearSpec, seed: int, amax_history: int, device) -> None:
        self.spec, self.seed = spec, int(seed)
        if _uses_delayed(spec):
            self.register_buffer("amax_history", torch.zeros(6, amax_history, device=device))
        else:
            self.amax_history = None
        self.qstate = QuantState(spec, seed=self.seed)

    @classmethod
    def from_conv(cls, conv, spec: LinearSpec, seed: int = 0, amax_history: int = 16):
        """A quantized copy of ``conv`` sharing its parameter objects (optimizers keep working)."""
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                  "transposed", "output_padding", "groups", "padding_mode",
                  "_reversed_padding_repeated_twice"):
            setattr(q, k, getattr(conv, k))
        q.weight, q.bias = conv.weight, conv.bias
        q._setup(spec, seed, amax_history, conv.weight.device)
        return q

    def _geometry(self, x: torch.Tensor, two_d: bool):
        """Pre-pad ``x`` where ``F.unfold``'s symmetric zero padding cannot express the module's
        (``padding="same"`` with an odd total, reflect/replicate/circular modes), and the geometry."""
        k = tuple(self.kernel_size)
        s, d = tuple(self.stride), tuple(self.dilation)
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            if any(self._reversed_padding_repeated_twice):
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            p = (0,) * len(k)
        else:
            p = tuple(self.padding)
        if not two_d:
            k, s, p, d = (1, *k), (1, *s), (0, *p), (1, *d)
        return x, ConvGeometry(k, s, p, d, self.groups)

    def get_extra_state(self):
        return {"generator": self.qstate.gen(self.weight.device).get_state()}

    def set_extra_state(self, state) -> None:
        if state and "generator" in state:
            self.qstate.gen(self.weight.device).set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


class QConv2d(_QConvMixin, nn.Conv2d):
    """A drop-in ``nn.Conv2d`` whose fprop, dgrad and wgrad GEMMs are quantized (an implicit
    GEMM on the unfolded input: :func:`floatlab.nn.functional.qconv` gives the layout, the
    block axes and why it equals the convolution). Every ``nn.Conv2d`` option works: stride,
    padding (numbers, ``"same"``, ``"valid"``), dilation, groups, bias, padding modes."""

    def __init__(self, *args, spec: LinearSpec, seed: int = 0, amax_history: int = 16, **kw) -> None:
        super().__init__(*args, **kw)
        self._setup(spec, seed, amax_history, self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.qstate.amax_history = self.amax_history
        x, geom = self._geometry(x, True)
        return qconv(x, self.weight, self.bias, self.qstate, geom)


class QConv1d(_QConvMixin, nn.Conv1d):
    """A drop-in ``nn.Conv1d`` with quantized GEMMs: the 2D implicit GEMM with a kernel height of
    1, so its reduction runs over ``C_in/groups * k`` (channel-major, ``weight.reshape(C_out, -1)``)."""

    def __init__(self, *args, spec: LinearSpec, seed: int = 0, amax_history: int = 16, **kw) -> None:
        super().__init__(*args, **kw)
        self._setup(spec, seed, amax_history, self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.qstate.amax_history = self.amax_history
        x, geom = self._geometry(x, False)
        w = self.weight.unsqueeze(2)
        return qconv(x.unsqueeze(2), w, self.bias, self.qstate, geom).squeeze(2)


QUANTIZED_MODULES = (QLinear, QConv1d, QConv2d)
