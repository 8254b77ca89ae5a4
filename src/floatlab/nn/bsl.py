"""Binary stochastic learning (BSL; Li et al. 2023): backpropagation whose elementary signals
are binary, for training on memristor arrays with fixed-step weight updates.

What the rule does, per layer ``z = W h_in + b``, ``h = sigmoid(z)``:

* **forward signals, Bernoulli-binarized**: ``h_b ~ Bernoulli(sigmoid(z))`` in ``{0, 1}``, so
  ``E[h_b] = sigmoid(z)``; the input pixels (in ``[0, 1]``) are binarized the same way;
* **activation derivatives, Bernoulli-binarized**: ``f'_b ~ Bernoulli(4 sigmoid(z)(1 - sigmoid(z)))``
  in ``{0, 1}`` (the derivative scaled by 4 to fill ``[0, 1]``), ``E[f'_b] = 4 f'(z)``;
* **errors, sign-binarized**: ``delta = sign(dL/dz)`` in ``{-1, 0, +1}``: at the output
  ``sign(e) * 1{|e| > 0.1}`` with ``e = softmax(z) - onehot(y)``, below it
  ``sign((W^T delta_next) * f'_b)``;
* **fixed-step weight updates**: ``G = sum_n delta_n h_n^T`` (integers: how many of the batch's
  samples ask each weight to move, and which way); each weight moves by one device level against
  ``sign(G)`` with probability ``|G| / batch`` (a Bernoulli pulse, so ``E[dW] = -step G / batch``)
  and is clamped to ``[-w_max, w_max]``, weights staying on the device's grid of
  ``levels`` equally spaced conductance levels in ``[-w_max, w_max]``
  (``step = 2 w_max / (levels - 1)``); see :class:`DeviceGrid` and :class:`FixedStepUpdate`.

Where the paper was silent (or not available to us) and what was chosen: the activation is the
logistic sigmoid (its output is a firing probability); the derivative is scaled by 4 before the
Bernoulli draw (the scale does not matter: the error is sign-binarized right after); the output error has a dead zone of 0.1 (without
it every wrong class gets the error +1 however small its probability, 9 of 10 outputs are pushed
down on every sample and all output weights run to ``-w_max``: measured, chance accuracy); one
pulse at most per weight and batch, drawn with probability ``|G| / batch`` (we tried first one
deterministic pulse against ``sign(G)``, which loses the magnitude and stayed at chance on digits,
then ``|G|`` pulses, which saturated the weights within a few batches); ``w_max = 2 / sqrt(fan_in)`` per layer and ``levels = 128`` by default;
weights start from PyTorch's default uniform initialization rounded to the grid; evaluation uses
the expected (deterministic) forward pass, ``h = sigmoid(z)`` on real pixels. The deterministic
ablation ``sign`` (``stochastic=False``) keeps real signals and derivatives, the same
sign-binarized errors, and moves every weight one level against ``sign(G)`` each batch; ``sgd`` (``sign_errors=False``) is ordinary
backpropagation of the same network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class _BernoulliSigmoid(torch.autograd.Function):
    """Forward: ``Bernoulli(sigmoid(z))`` (or ``sigmoid(z)``); backward: ``sign(g * f'_b)`` with
    ``f'_b ~ Bernoulli(4 s (1 - s))`` (or the real derivative, signed or not)."""

    @staticmethod
    def forward(ctx, z, generator, stochastic: bool, sign_errors: bool):
        s = torch.sigmoid(z)
        d = 4 * s * (1 - s) if sign_errors else s * (1 - s)
        if stochastic:
            h = (torch.rand(s.shape, generator=generator, device=s.device) < s).to(z.dtype)
            d = (torch.rand(d.shape, generator=generator, device=d.device) < d).to(z.dtype)
        else:
            h = s
        ctx.sign_errors = sign_errors
        ctx.save_for_backward(d)
        return h

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        e = g * d
        return (torch.sign(e) if ctx.sign_errors else e), None, None, None


class _SignGrad(torch.autograd.Function):
    """Identity forward; backward ``sign(g) * 1{|g| * N > dead_zone}`` (``N`` rows): the
    sign-binarized output error, zero where the per-sample error is within the dead zone."""

    @staticmethod
    def forward(ctx, x, dead_zone: float):
        ctx.dead_zone = dead_zone
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        n = g.shape[0] if g.ndim > 1 else 1
        return torch.sign(g) * (g.abs() * n > ctx.dead_zone), None


def bernoulli_sigmoid(z: torch.Tensor, generator: torch.Generator | None = None, stochastic: bool = True,
                      sign_errors: bool = True) -> torch.Tensor:
    """The BSL activation (see the module docstring); ``z`` any float tensor."""
    return _BernoulliSigmoid.apply(z, generator, stochastic, sign_errors)


DEAD_ZONE = 0.1


def sign_error(logits: torch.Tensor, dead_zone: float = DEAD_ZONE) -> torch.Tensor:
    """``logits (N, C)`` unchanged; the gradient flowing back through them, ``(softmax - onehot)/N``
    for a mean cross-entropy, becomes its sign where the per-sample error exceeds ``dead_zone``
    and 0 elsewhere."""
    return _SignGrad.apply(logits, float(dead_zone))


def bernoulli(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``{0, 1}`` draws with ``P(1) = p`` (``p`` in ``[0, 1]``), from ``generator``."""
    return (torch.rand(p.shape, generator=generator, device=p.device) < p).to(p.dtype)


class BSLNet(nn.Module):
    """A one-hidden-layer sigmoid MLP ``fc1 -> sigmoid -> fc2`` trained by BSL, its sign-only
    ablation, or SGD (``stochastic``/``sign_errors``). Input ``(N, *in_shape)`` in ``[0, 1]``;
    output logits ``(N, classes)``. The Bernoulli generator's state is in ``state_dict``."""

    def __init__(self, in_shape, width: int, classes: int, stochastic: bool = True, seed: int = 0,
                 sign_errors: bool = True) -> None:
        super().__init__()
        n = int(math.prod(in_shape))
        self.fc1 = nn.Linear(n, width)
        self.fc2 = nn.Linear(width, classes)
        self.stochastic, self.sign_errors = bool(stochastic), bool(sign_errors)
        self.generator = torch.Generator().manual_seed(int(seed) + 7777)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        train = self.training
        stochastic = self.stochastic and train
        if stochastic:
            x = bernoulli(x.clamp(0, 1), self.generator)
        h = bernoulli_sigmoid(self.fc1(x), self.generator if stochastic else None, stochastic,
                              self.sign_errors and train)
        logits = self.fc2(h)
        return sign_error(logits) if (self.sign_errors and train) else logits

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        if state and "generator" in state:
            self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class DeviceGrid:
    """A device's weight range and levels per parameter: ``w_max`` (one per parameter, in the
    order of ``parameters()``) and the number of ``levels``."""

    w_max: tuple[float, ...]
    levels: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {self.levels!r}")

    @classmethod
    def for_model(cls, model: nn.Module, levels: int = 128, gain: float = 2.0) -> "DeviceGrid":
        """``w_max = gain / sqrt(fan_in)`` for each layer's weight and bias."""
        out = []
        for m in model.modules():
            if isinstance(m, nn.Linear):
                w = gain / math.sqrt(m.in_features)
                out += [w] * (2 if m.bias is not None else 1)
        return cls(tuple(out), levels)

    def step(self, i: int) -> float:
        return 2 * self.w_max[i] / (self.levels - 1)

    def snap(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """``p`` clamped to ``[-w_max, w_max]`` and rounded to the nearest level."""
        s, w = self.step(i), self.w_max[i]
        k = torch.round((p.clamp(-w, w) + w) / s)
        return k * s - w


class FixedStepUpdate(torch.optim.Optimizer):
    """Fixed-step device updates on the grid of :class:`DeviceGrid` (weights clamped to
    ``[-w_max, w_max]``, snapped to it when the optimizer is made; no learning rate: the step is
    one level). ``grad`` is the batch's summed update direction ``G = sum_n delta_n h_n^T`` and
    ``batch`` its number of samples.

    * ``stochastic=True`` (BSL): each weight gets one pulse against ``sign(G)`` with probability
      ``min(1, |G| / batch)`` (a Bernoulli draw from ``generator``), so
      ``E[dW] = -step * G / batch``: the expected update is the batch-mean direction.
    * ``stochastic=False`` (the deterministic sign-only ablation): one pulse against ``sign(G)``
      for every weight with ``G != 0``.
    """

    def __init__(self, params, grid: DeviceGrid, stochastic: bool = True, seed: int = 0) -> None:
        super().__init__(params, {})
        self.grid, self.stochastic = grid, bool(stochastic)
        self.generator = torch.Generator().manual_seed(int(seed) + 99991)
        self.batch = 1
        plist = [p for g in self.param_groups for p in g["params"]]
        if len(plist) != len(grid.w_max):
            raise ValueError(f"the device grid has {len(grid.w_max)} ranges for {len(plist)} parameters")
        with torch.no_grad():
            for i, p in enumerate(plist):
                p.copy_(grid.snap(p, i))

    def pulses(self, grad: torch.Tensor, batch: int) -> torch.Tensor:
        """The pulses ``{-1, 0, +1}`` (in levels) that ``grad`` sends, as documented above."""
        direction = -torch.sign(grad)
        if not self.stochastic:
            return direction
        p = (grad.abs() / max(int(batch), 1)).clamp(max=1)
        return direction * bernoulli(p, self.generator)

    @torch.no_grad()
    def step(self, closure=None):
        i = 0
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.copy_(self.grid.snap(p + self.grid.step(i) * self.pulses(p.grad, self.batch), i))
                i += 1
        return None

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state) -> None:
        self.generator.set_state(state["generator"])


__all__ = ["BSLNet", "DeviceGrid", "FixedStepUpdate", "bernoulli", "bernoulli_sigmoid", "sign_error"]
