"""``QLinear``: an ``nn.Linear`` whose three GEMMs are quantized by a :class:`LinearSpec`."""

from __future__ import annotations

import torch
from torch import nn

from floatlab.nn.functional import GEMMS, QuantState, qlinear
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
