"""Mixed- and low-precision training state: dynamic loss scaling and fp32 master weights.

:class:`DynamicLossScaler` is the loss scaling of Micikevicius et al., "Mixed Precision
Training" (ICLR 2018, arXiv:1710.03740, section 3.2) as ``torch.amp.GradScaler`` implements it:
the loss is multiplied by ``S`` before the backward pass so that small gradients survive a
narrow format (fp16's smallest subnormal is 2^-24, HiF8's 2^-22); gradients are divided by
``S`` before the update. When any gradient is Inf or NaN the step is **skipped** and ``S`` is
multiplied by ``backoff`` (0.5); after ``growth_interval`` consecutive clean steps ``S`` is
multiplied by ``growth`` (2). Powers of two keep the scaling and unscaling exact (apart from
underflow below the format's smallest subnormal, which is what the scale is there to avoid).

:class:`MasterWeights` keeps a float32 copy of parameters that live in fp16/bf16: gradients
are copied up, the wrapped optimizer updates the float32 copy (its states are float32 too), and
the result is rounded back (RNE, ``Tensor.to``) into the low-precision parameters. Without it,
an optimizer over fp16 parameters keeps its states in fp16 and adds updates in fp16.
"""

from __future__ import annotations

import math

import torch


def _check_positive(name: str, v, low: float = 0.0, integer: bool = False) -> None:
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not v > low or not math.isfinite(v)
    if integer and not bad:
        bad = int(v) != v
    if bad:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} > {low:g}, got {v!r}")


class DynamicLossScaler:
    """Dynamic loss scaling: skip the step and back off on overflow, grow after clean steps.

    Args:
        init_scale: the first scale ``S`` (default 2^16, GradScaler's).
        growth: factor applied after ``growth_interval`` clean steps in a row (> 1; default 2).
        backoff: factor applied on an overflow (in (0, 1); default 0.5).
        growth_interval: clean steps before growing (>= 1; GradScaler's default 2000; the
            HiFloat8 and FP16 recipes of ``floatlab train`` use shorter windows on short runs).
        min_scale, max_scale: bounds of ``S`` (default 2^-24 and 2^64).

    Use, once per step after ``(scaler.scale(loss)).backward()``::

        overflow = scaler.unscale_(params)   # divide the grads by S; True if any is Inf/NaN
        if not overflow:
            optimizer.step()
        scaler.update(overflow)              # halve S (overflow) or count a clean step

    Attributes: ``scale`` (float), ``clean_steps`` (since the last change), ``overflows``
    (total skipped steps).

    Raises:
        ValueError: a factor or bound out of range.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth: float = 2.0, backoff: float = 0.5,
                 growth_interval: int = 2000, min_scale: float = 2.0 ** -24,
                 max_scale: float = 2.0 ** 64) -> None:
        _check_positive("init_scale", init_scale)
        _check_positive("growth", growth, 1.0)
        _check_positive("backoff", backoff)
        if not backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {backoff!r}")
        _check_positive("growth_interval", growth_interval, 0, integer=True)
        _check_positive("min_scale", min_scale)
        _check_positive("max_scale", max_scale)
        if not min_scale <= init_scale <= max_scale:
            raise ValueError(f"init_scale {init_scale!r} is outside [min_scale, max_scale] = "
                             f"[{min_scale!r}, {max_scale!r}]")
        self.scale = float(init_scale)
        self.growth, self.backoff = float(growth), float(backoff)
        self.growth_interval = int(growth_interval)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.clean_steps = 0
        self.overflows = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * S`` (the tensor to call ``backward()`` on)."""
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, params) -> bool:
        """Divide every ``p.grad`` of ``params`` by ``S`` in place; return True when any
        gradient holds an Inf or NaN (then the grads are left as they were: the step is to be
        skipped)."""
        grads = [p.grad for p in params if p.grad is not None]
        overflow = any(not bool(torch.isfinite(g).all()) for g in grads)
        if not overflow:
            inv = 1.0 / self.scale
            for g in grads:
                g.mul_(inv)
        return overflow

    def update(self, overflow: bool) -> None:
        """After a step: back off on ``overflow``, otherwise count a clean step and grow after
        ``growth_interval`` of them."""
        if overflow:
            self.scale = max(self.min_scale, self.scale * self.backoff)
            self.clean_steps = 0
            self.overflows += 1
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale = min(self.max_scale, self.scale * self.growth)
            self.clean_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.overflows = int(state["overflows"])

    def __repr__(self) -> str:
        return (f"DynamicLossScaler(scale={self.scale:g}, growth={self.growth:g} every "
                f"{self.growth_interval} clean steps, backoff={self.backoff:g}, overflows={self.overflows})")


class MasterWeights:
    """An optimizer that updates float32 master copies of low-precision (fp16/bf16) parameters.

    Args:
        make_optimizer: called with the param groups over the float32 copies (same structure
            and options as ``param_groups``) and returns the optimizer, e.g.
            ``lambda groups: torch.optim.AdamW(groups, lr=1e-3)``.
        param_groups: a list of ``{"params": [...], **options}`` over the model's parameters.

    Per step: ``copy_grads()`` (model grads -> float32 master grads), then the scaler and
    clipping act on :meth:`params`, then ``step()`` updates the masters and rounds them back
    (RNE) into the model's parameters. ``state_dict`` holds the masters and the optimizer.
    """

    def __init__(self, make_optimizer, param_groups: list[dict]) -> None:
        self.model_params: list[torch.Tensor] = []
        self.masters: list[torch.Tensor] = []
        groups = []
        for g in param_groups:
            ms = []
            for p in g["params"]:
                m = p.detach().to(torch.float32).clone().requires_grad_(True)
                self.model_params.append(p)
                self.masters.append(m)
                ms.append(m)
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ms})
        self.optimizer = make_optimizer(groups)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def params(self) -> list[torch.Tensor]:
        """The tensors whose ``.grad`` the optimizer reads: the float32 masters."""
        return self.masters

    @torch.no_grad()
    def copy_grads(self) -> None:
        for p, m in zip(self.model_params, self.masters):
            m.grad = None if p.grad is None else p.grad.to(torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        for p, m in zip(self.model_params, self.masters):
            p.copy_(m)          # round to the parameter's dtype (RNE)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for p in self.model_params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "masters": [m.detach().clone() for m in self.masters]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for m, saved in zip(self.masters, state["masters"]):
            m.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])


__all__ = ["DynamicLossScaler", "MasterWeights"]
