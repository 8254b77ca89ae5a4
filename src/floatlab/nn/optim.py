"""Low-precision training state: master weights, gradients and optimizer states in a format.

In the spirit of QPyTorch's ``OptimLP``: wrap any ``torch.optim`` optimizer; after every step
the parameters (the master weights) and the optimizer's floating state tensors (``exp_avg``,
``exp_avg_sq``, ``momentum_buffer``...) are rounded to chosen formats, e.g. bf16 master weights
with stochastic rounding, so that small updates survive on average.
"""

from __future__ import annotations

import torch

from floatlab.nn.quantizer import fake_quantize


def _as_pair(spec):
    if spec is None:
        return None
    if isinstance(spec, str):
        return (spec, None)
    fmt, rounding = spec
    if rounding is not None:   # one spelling per mode: ("bf16", "SR") draws from the seeded generator too
        from floatlab.rounding import parse_rounding
        rounding = parse_rounding(rounding).value
    return (fmt, rounding)


class LowPrecisionOptimizer:
    """Wrap ``optimizer`` so weights, gradients and states live in low-precision formats.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        weight: format of the master weights, a name or ``(name, rounding)``, e.g.
            ``("bf16", "sr")``; ``None`` keeps float32.
        grad: format the gradients are rounded to before the step (``None``: untouched).
        states: one spec for every floating state tensor, or a dict ``{state_name: spec}``.
        seed: seeds the generator of the stochastic roundings (saved in ``state_dict``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weight=None, grad=None, states=None,
                 seed: int = 0) -> None:
        self.optimizer = optimizer
        self.weight, self.grad = _as_pair(weight), _as_pair(grad)
        if isinstance(states, dict):
            self.states = {k: _as_pair(v) for k, v in states.items()}
            self.default_state = None
        else:
            self.states, self.default_state = {}, _as_pair(states)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.quantize_params()  # the master weights start on the format's grid

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def _q(self, t: torch.Tensor, spec) -> torch.Tensor:
        fmt, rounding = spec
        gen = self.generator if (rounding in ("sr", "sr_half", "hybrid") and t.device.type == "cpu") else None
        if rounding in ("sr", "sr_half", "hybrid") and gen is None:
            gen = torch.Generator(device=t.device)
            gen.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=self.generator)))
        return fake_quantize(t, fmt, rounding, True, -1, gen)

    @torch.no_grad()
    def quantize_params(self) -> None:
        if self.weight is None:
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(self._q(p, self.weight))

    @torch.no_grad()
    def step(self, closure=None):
        if self.grad is not None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.copy_(self._q(p.grad, self.grad))
        loss = self.optimizer.step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                for name, val in self.optimizer.state.get(p, {}).items():
                    spec = self.states.get(name, self.default_state)
                    if spec is not None and torch.is_tensor(val) and val.is_floating_point() and val.ndim > 0:
                        val.copy_(self._q(val, spec))
        self.quantize_params()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"LowPrecisionOptimizer({type(self.optimizer).__name__}, weight={self.weight}, "
                f"grad={self.grad}, states={self.states or self.default_state})")
