"""Training options beyond the recipe: the dtype the model lives in, master weights, loss
scaling and a bf16 warm-up.

A :class:`~floatlab.nn.recipe.Recipe` says how each GEMM operand is rounded; these options say
what the rest of the training state is:

* ``dtype``: ``"fp32"`` (default: parameters, activations, gradients and optimizer states in
  float32; the recipe's GEMM operands emulated), ``"fp16"`` or ``"bf16"``: the model itself is
  cast (``model.to``), so parameters, every activation (norms, softmax, residual adds, the GEMMs'
  inputs and outputs), gradients and, without master weights, the optimizer's states are fp16 /
  bf16 -- end-to-end low-precision training as on hardware without float32 units (the FP16
  on-device training setting). The loss (cross entropy) is computed in float32 from the logits,
  as mixed-precision training does (Micikevicius et al. 2018, section 3.3: reductions in fp32).
* ``master_weights``: with ``dtype`` fp16/bf16, keep float32 master weights and float32
  optimizer states (:class:`~floatlab.nn.amp.MasterWeights`); ``False`` updates the fp16/bf16
  parameters in place (every update rounded to the parameter's format, RNE).
* ``loss_scale``: ``"none"`` or ``"dynamic"`` (:class:`~floatlab.nn.amp.DynamicLossScaler`:
  skip the step and multiply the scale by ``backoff`` on an Inf/NaN gradient, multiply it by
  ``growth`` after ``growth_interval`` clean steps).
* ``warmup_bf16``: the first ``warmup_bf16`` steps run every quantized GEMM in bf16 (the
  recipe's layers with the ``bf16`` recipe's spec), then the recipe (HiFloat8's training
  recipe offers a short bf16 warm-up). Delayed-scaling histories start filling at the switch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LOSS_SCALES = ("none", "dynamic")


@dataclass(frozen=True)
class TrainOptions:
    """See the module docstring. Raises ``ValueError`` naming the field for a bad value."""

    dtype: str = "fp32"
    master_weights: bool = True
    loss_scale: str = "none"
    init_scale: float = 2.0 ** 16
    growth_interval: int = 200
    backoff: float = 0.5
    growth: float = 2.0
    warmup_bf16: int = 0

    def __post_init__(self) -> None:
        d = str(self.dtype).strip().lower()
        d = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(d, d)
        if d not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", d)
        ls = str(self.loss_scale).strip().lower()
        if ls not in LOSS_SCALES:
            raise ValueError(f"loss_scale must be one of {', '.join(LOSS_SCALES)}, got {self.loss_scale!r}")
        object.__setattr__(self, "loss_scale", ls)
        if not isinstance(self.master_weights, bool):
            raise ValueError(f"master_weights must be true or false, got {self.master_weights!r}")
        w = self.warmup_bf16
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"warmup_bf16 must be an integer >= 0 (steps), got {w!r}")
        if self.loss_scale == "dynamic":
            self.scaler()        # validates init_scale, growth_interval, backoff, growth

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def uses_masters(self) -> bool:
        return self.dtype != "fp32" and self.master_weights

    def scaler(self):
        """A fresh :class:`~floatlab.nn.amp.DynamicLossScaler`, or ``None`` without loss scaling."""
        if self.loss_scale != "dynamic":
            return None
        from floatlab.nn.amp import DynamicLossScaler
        return DynamicLossScaler(self.init_scale, self.growth, self.backoff, self.growth_interval)

    def to_dict(self) -> dict:
        """The fields that differ from the defaults (``{}`` for the default options), so the run
        configuration of a run without options is what it was before options existed."""
        base = asdict(_DEFAULT)
        return {k: v for k, v in asdict(self).items() if v != base[k]}

    def describe(self) -> str:
        parts = []
        if self.dtype != "fp32":
            parts.append(f"model in {self.dtype}" + (" with fp32 master weights" if self.master_weights
                                                      else " (no master weights)"))
        if self.loss_scale == "dynamic":
            parts.append(f"dynamic loss scaling (2^{_log2(self.init_scale)}, x{self.backoff:g} on overflow, "
                         f"x{self.growth:g} after {self.growth_interval} clean steps)")
        if self.warmup_bf16:
            parts.append(f"{self.warmup_bf16} bf16 warm-up steps")
        return ", ".join(parts) or "float32 model, no loss scaling"


def _log2(v: float) -> str:
    import math
    e = math.log2(v)
    return f"{int(e)}" if e == int(e) else f"{e:.2f}"


_DEFAULT = TrainOptions()


def options_from(value) -> TrainOptions:
    """``None`` -> the defaults; a :class:`TrainOptions` as is; a dict -> ``TrainOptions(**d)``
    (``ValueError`` naming an unknown key)."""
    if value is None:
        return _DEFAULT
    if isinstance(value, TrainOptions):
        return value
    if isinstance(value, dict):
        known = set(asdict(_DEFAULT))
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown training option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return TrainOptions(**value)
    raise TypeError(f"training options must be a TrainOptions or a dict, got {type(value).__name__}")


__all__ = ["TrainOptions", "options_from", "DTYPES"]
