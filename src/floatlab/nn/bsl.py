"""Binary stochastic learning (BSL; Li et al. 2023, "Binary stochasticity enabled highly efficient
neuromorphic deep learning achieves better-than-software accuracy", arXiv 2304.12866): backpropagation
whose elementary signals are binary, for training on memristor arrays with fixed-step weight updates.

The paper names three changes to backpropagation (its abstract): (i) stochastic binarization of the
forwarding signals and of the activation-function derivatives, (ii) signed binarization of the
backpropagating errors, (iii) step-wise weight updates. Its body (equations, network, schedule) was
not available to us (the reference index holds the abstract only and no code is published), so the
rule below is our reading of those three points; each choice is listed under "Choices".

The rule, for the MLP ``x -> fc1 -> sigmoid -> fc2 -> sigmoid`` (:class:`BSLNet`), per sample:

* **forward signals, Bernoulli-binarized** (training): pixels ``x_b ~ Bernoulli(x)`` (``x`` in
  ``[0, 1]``), hidden spikes ``h_b ~ Bernoulli(sigmoid(z1))``, output spikes
  ``o_b ~ Bernoulli(sigmoid(z2))``, all in ``{0, 1}``, so ``E[h_b] = sigmoid(z1)``;
* **activation derivatives, Bernoulli-binarized**: ``d_b ~ Bernoulli(sigmoid'(z1) / max sigmoid')
  = Bernoulli(4 sigmoid(z1) (1 - sigmoid(z1)))`` in ``{0, 1}``;
* **errors, signed binary**: at the output ``e = o_b - onehot(y)`` in ``{-1, 0, +1}`` (already a
  signed binary number; ``E[e] = sigmoid(z2) - onehot(y)``, the gradient of the summed binary
  cross-entropy of the sigmoid outputs with respect to ``z2``); in the hidden layer
  ``delta = sign(W2^T e) * d_b`` in ``{-1, 0, +1}``;
* **step-wise updates**: every sample asks each weight for one pulse of one device level against
  ``delta_i x_j`` (``x_j`` the binary input of that synapse; a bias is a synapse whose input is
  always 1). A batch applies the pulses of its samples together: weight ``W_ij`` moves by
  ``-step * G_ij`` with ``G = sum_n delta_n x_n^T`` the integer net pulse count (a per-sample
  update whose writes are deferred to the end of the batch), then it is clamped to
  ``[-w_max, w_max]``. Weights live on the grid of ``levels`` equally spaced conductance levels
  (``step = 2 w_max / (levels - 1)``; :class:`DeviceGrid`). With ``rate < 1`` each pulse is applied
  with probability ``rate`` (stochastic rounding of ``rate * G``: ``E[dW] = -step * rate * G``), a
  learning-rate knob a device has; the default applies every pulse.

Baselines on the same network (``rule``): ``"sign"``, the deterministic **Manhattan rule**
(Zamanidoost et al. 2015): real signals, the exact gradient of the mean cross-entropy of the
softmax, and every weight moved one level against the sign of its batch gradient (on the same
device grid); ``"sgd"``: ordinary float32 backpropagation of the same loss (an ordinary optimizer).

Why the earlier version stayed at chance (docs/images.md: 18.9 % on Fashion-MNIST after 400
steps): (1) its output error was the sign of ``softmax - onehot``, which is +1 for every wrong class
whatever the prediction (the sign carries only the label), so every sample pushed 9 of the 10
outputs down; its dead zone of 0.1 did not cure it. A binary *output neuron* does: ``o_b - onehot``
is 0 whenever the sampled output is right, and its mean is the gradient of the binary
cross-entropy. (2) It sent at most one pulse per weight and batch, with probability
``|G| / batch``: the update of a batch *mean*, 1/batch of the per-sample rule, so weights moved a
few levels in 400 steps.
``tests/test_nn_bsl.py`` checks the rule against an enumeration of its definition and that every
rule learns the 8x8 digits.

Choices (where the paper's abstract is silent):

* activation: the logistic sigmoid (a firing probability), hidden and output layers;
* derivative scale: ``sigmoid' / max sigmoid' = 4 s (1 - s)``, so the steepest point fires with
  probability 1 (only the sign of the hidden error matters, so the scale sets how often a neuron
  passes an error back);
* output error: binary output neuron minus the one-hot target (no derivative factor at the output,
  the binary cross-entropy form); the hidden error: the sign of the real-valued back-projection
  ``W2^T e`` times the binary derivative;
* device: ``levels = 256`` and ``w_max = 8 / sqrt(fan_in)`` per layer (weights and biases);
  ``benchmarks/bsl_sweep.py`` compares 32-512 levels x gains 2-16 on held-out training images
  (docs/images.md: this default is within 2 points of the best of that grid); initial weights: PyTorch's uniform initialization rounded to the
  grid;
* pulses of a batch summed (``rate = 1``, no schedule);
* evaluation: the expected (mean-field) network, ``h = sigmoid(z1)`` on real pixels, ``argmax z2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

RULES = ("bsl", "sign", "sgd")


def bernoulli(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``{0, 1}`` draws with ``P(1) = p`` (``p`` in ``[0, 1]``, any float dtype), from ``generator``;
    same shape and dtype as ``p``."""
    return (torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) < p).to(p.dtype)


class _BernoulliSigmoid(torch.autograd.Function):
    """Forward ``h_b ~ Bernoulli(sigmoid(z))``; backward ``sign(g) * d_b`` with
    ``d_b ~ Bernoulli(4 s (1 - s))`` drawn in the forward pass (after ``h_b``)."""

    @staticmethod
    def forward(ctx, z, generator):
        s = torch.sigmoid(z)
        h = bernoulli(s, generator)
        d = bernoulli(4 * s * (1 - s), generator)
        ctx.save_for_backward(d)
        return h

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        return torch.sign(g) * d, None


def bernoulli_sigmoid(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """BSL's hidden activation: spikes ``Bernoulli(sigmoid(z))`` in ``{0, 1}`` forward; the gradient
    passed back is the signed binary error ``sign(g) * Bernoulli(4 s (1 - s))``. ``z`` any float
    tensor; returns its shape and dtype."""
    return _BernoulliSigmoid.apply(z, generator)


def binary_output_error(z: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """BSL's output error ``Bernoulli(sigmoid(z)) - onehot(y)`` in ``{-1, 0, +1}``; ``z (N, C)``
    float, ``y (N,)`` int64 class indices in ``[0, C)``; returns ``(N, C)`` with ``z``'s dtype.
    ``E[e] = sigmoid(z) - onehot(y)``. Raises ``ValueError`` on mismatched shapes or classes."""
    if z.ndim != 2 or y.shape != z.shape[:1]:
        raise ValueError(f"binary_output_error needs z (N, C) and y (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
        raise ValueError(f"class indices must be in [0, {z.shape[1]}), got {int(y.min())}..{int(y.max())}")
    o = bernoulli(torch.sigmoid(z.detach()), generator)
    return o - F.one_hot(y, z.shape[1]).to(z.dtype)


class BSLNet(nn.Module):
    """The one-hidden-layer sigmoid MLP ``fc1 -> sigmoid -> fc2`` of binary stochastic learning and
    its baselines. Input ``(N, *in_shape)`` pixels in ``[0, 1]``; output logits ``(N, classes)``.

    ``rule="bsl"`` draws binary signals in training (module docstring); ``"sign"`` and ``"sgd"``
    run the deterministic network. In evaluation every rule runs the expected network
    ``fc2(sigmoid(fc1(x)))``. :meth:`training_loss` gives the loss whose ``backward`` leaves the
    rule's update direction in ``.grad``. The Bernoulli generator's state is in ``state_dict``.
    Raises ``ValueError`` for an unknown rule."""

    def __init__(self, in_shape, width: int, classes: int, rule: str = "bsl", seed: int = 0) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown BSL rule {rule!r}: choose from {', '.join(RULES)}")
        n = int(math.prod(in_shape))
        self.fc1 = nn.Linear(n, width)
        self.fc2 = nn.Linear(width, classes)
        self.rule = rule
        self.generator = torch.Generator().manual_seed(int(seed) + 7777)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.rule == "bsl" and self.training:
            h = bernoulli_sigmoid(self.fc1(bernoulli(x.clamp(0, 1), self.generator)), self.generator)
        else:
            h = torch.sigmoid(self.fc1(x))
        return self.fc2(h)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of this batch's logits (the number to report). Its ``backward``
        leaves in each parameter's ``.grad``: for ``bsl``, the integer net pulse counts
        ``G = sum_n delta_n x_n^T`` of the binary rule (not the cross-entropy's gradient); for
        ``sign`` and ``sgd``, the gradient of the mean cross-entropy."""
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        if self.rule != "bsl" or not self.training:
            return ce
        e = binary_output_error(logits, y, self.generator)
        surrogate = (logits * e).sum()          # d/d logits = e, summed over the batch (no 1/N)
        return ce.detach() + (surrogate - surrogate.detach())

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        if state and "generator" in state:
            self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class DeviceGrid:
    """A device's weight range and levels per parameter: ``w_max`` (one per parameter, in the
    order of ``parameters()``) and the number of ``levels`` (spaced ``2 w_max / (levels - 1)``,
    symmetric about 0; an even count has no level at 0). Raises ``ValueError`` for ``levels < 2``
    or a ``w_max`` that is not positive."""

    w_max: tuple[float, ...]
    levels: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {self.levels!r}")
        if any(not (w > 0 and math.isfinite(w)) for w in self.w_max):
            raise ValueError(f"every w_max must be positive and finite, got {self.w_max}")

    @classmethod
    def for_model(cls, model: nn.Module, levels: int = 256, gain: float = 8.0) -> "DeviceGrid":
        """``w_max = gain / sqrt(fan_in)`` for each ``nn.Linear``'s weight and bias, in
        ``parameters()`` order (raises ``ValueError`` if the model has other parameters)."""
        out, seen = [], []
        for m in model.modules():
            if isinstance(m, nn.Linear):
                w = gain / math.sqrt(m.in_features)
                out.append(w)
                seen.append(m.weight)
                if m.bias is not None:
                    out.append(w)
                    seen.append(m.bias)
        if [id(p) for p in seen] != [id(p) for p in model.parameters()]:
            raise ValueError("DeviceGrid.for_model needs a model whose parameters are its nn.Linear weights and biases")
        return cls(tuple(out), levels)

    def step(self, i: int) -> float:
        return 2 * self.w_max[i] / (self.levels - 1)

    def snap(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """``p`` clamped to ``[-w_max, w_max]`` and rounded to the nearest level."""
        s, w = self.step(i), self.w_max[i]
        k = torch.round((p.clamp(-w, w) + w) / s)
        return k * s - w


class FixedStepUpdate(torch.optim.Optimizer):
    """Step-wise device updates on the grid of :class:`DeviceGrid` (no learning rate: a pulse
    moves a weight one level; weights are snapped onto the grid when the optimizer is made).

    * ``mode="pulses"`` (BSL): ``grad`` holds integer net pulse counts ``G``; the weight moves
      ``-step * k`` with ``k = G`` when ``rate = 1``, otherwise ``k`` is ``rate * G`` rounded
      stochastically (``E[k] = rate * G``, draws from ``generator``).
    * ``mode="sign"`` (the Manhattan rule): one level against ``sign(grad)`` for every weight
      whose gradient is not zero.

    Then the weight is clamped to ``[-w_max, w_max]`` and rounded to its level. Raises
    ``ValueError`` for an unknown mode, ``rate`` outside ``(0, 1]``, or a grid that does not have
    one range per parameter."""

    def __init__(self, params, grid: DeviceGrid, mode: str = "pulses", rate: float = 1.0, seed: int = 0) -> None:
        if mode not in ("pulses", "sign"):
            raise ValueError(f"mode must be 'pulses' or 'sign', got {mode!r}")
        if not 0.0 < float(rate) <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate!r}")
        super().__init__(params, {"rate": float(rate)})
        self.grid, self.mode = grid, mode
        self.generator = torch.Generator().manual_seed(int(seed) + 99991)
        plist = [p for g in self.param_groups for p in g["params"]]
        if len(plist) != len(grid.w_max):
            raise ValueError(f"the device grid has {len(grid.w_max)} ranges for {len(plist)} parameters")
        with torch.no_grad():
            for i, p in enumerate(plist):
                p.copy_(grid.snap(p, i))

    def pulses(self, grad: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """The signed number of pulses (levels) ``grad`` sends, as documented above."""
        if self.mode == "sign":
            return -torch.sign(grad)
        if rate == 1.0:
            return -grad
        k = grad * rate
        low = torch.floor(k)
        return -(low + bernoulli(k - low, self.generator))

    @torch.no_grad()
    def step(self, closure=None):
        i = 0
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.copy_(self.grid.snap(p + self.grid.step(i) * self.pulses(p.grad, g["rate"]), i))
                i += 1
        return None

    def state_dict(self):
        return {"generator": self.generator.get_state(), "rates": [g["rate"] for g in self.param_groups]}

    def load_state_dict(self, state) -> None:
        self.generator.set_state(state["generator"])
        for g, r in zip(self.param_groups, state.get("rates", [])):
            g["rate"] = r


def build_rule(rule: str, in_shape, width: int, classes: int, seed: int = 0, lr: float = 0.1,
               levels: int = 256, gain: float = 8.0):
    """Network and optimizer of one rule: ``bsl`` (pulses on the device grid), ``sign`` (the
    Manhattan rule on the same grid) or ``sgd`` (SGD with momentum 0.9 at ``lr``). Raises
    ``ValueError`` for an unknown rule."""
    net = BSLNet(in_shape, width, classes, rule=rule, seed=seed)
    if rule == "sgd":
        return net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    grid = DeviceGrid.for_model(net, levels, gain)
    return net, FixedStepUpdate(net.parameters(), grid, mode="pulses" if rule == "bsl" else "sign", seed=seed)


__all__ = ["BSLNet", "DeviceGrid", "FixedStepUpdate", "RULES", "bernoulli", "bernoulli_sigmoid",
           "binary_output_error", "build_rule"]
