"""What to quantize and how: one frozen config, from the CLI or from code."""

from __future__ import annotations

from dataclasses import dataclass, field

from floatlab.ptq.calibration import NONFINITE_POLICIES
from floatlab.ptq.quantizer import QuantSpec, as_spec

#: rounding methods (how a weight is put on the grid)
ROUNDERS = ("rtn", "gptq", "lwc", "ptq161")
#: rounders that learn parameters by block-wise reconstruction (floatlab.ptq.reconstruct)
RECONSTRUCTING = ("lwc", "ptq161")
#: mixed precision of the reconstruction's training steps (ReconOptions.amp)
AMP_MODES = ("off", "bf16")
#: transforms applied before rounding (they keep the fp32 model's function)
TRANSFORMS = ("rotate", "smoothquant", "awq")
#: transforms that gather statistics from calibration data
CALIBRATING_TRANSFORMS = ("smoothquant", "awq")


@dataclass(frozen=True)
class GPTQOptions:
    """GPTQ (Frantar et al. 2022) settings.

    Args:
        damp: dampening, a fraction of the mean Hessian diagonal added to the diagonal.
        block_size: columns per lazy batch update.
        act_order: process columns by decreasing Hessian diagonal.
        group_size: scalar formats: one scale per ``group_size`` columns, computed when GPTQ
            reaches the group (block formats always use their own block as the group).
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    group_size: int | None = None


@dataclass(frozen=True)
class ReconOptions:
    """Block-wise reconstruction settings (``lwc``, ``ptq161``; see :mod:`floatlab.ptq.reconstruct`).

    Args:
        epochs: passes over the calibration sequences per block (both methods' papers: 20).
        lr: learning rate of the method's parameters; ``None`` takes the method's default
            (LWC 1e-2, OmniQuant's; PTQ1.61: 5e-4 for the binary scales and 1e-3 for the
            per-row/per-column factors, the authors' code) and a number replaces all of them.
        weight_decay: AdamW's (0, as both papers' code).
        seed: seeds the order of the calibration sequences in each epoch and any random mask.
        sequences: calibration sequences per optimizer step.
        amp: mixed precision of the training steps. ``"off"`` (default): everything in float32.
            ``"bf16"``: the block's forward and backward in each AdamW step run under
            ``torch.autocast(dtype=torch.bfloat16)`` (OmniQuant's and PTQ1.61's code train under
            fp16 autocast on GPUs): its matmuls (linear, attention) multiply bfloat16 operands
            with float32 accumulation. Kept in float32: the learnable parameters and AdamW's
            state, the fake-quantized weight and every rounding decision that builds it (computed
            outside autocast, then rounded to bfloat16 by the matmul), the targets, the loss, the
            reported losses, and the frozen block that feeds the next one. The stored weights
            are quantized by the codec exactly as with ``"off"``; only the parameters they are
            quantized with differ (they were trained with bfloat16 products). Fast on CPUs
            with AMX/AVX512-BF16 and on GPUs; slower than float32 where bfloat16 is emulated.
            See docs/ptq.md.
    """

    epochs: int = 20
    lr: float | None = None
    weight_decay: float = 0.0
    seed: int = 0
    sequences: int = 1
    amp: str = "off"

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"ReconOptions.amp must be one of {', '.join(map(repr, AMP_MODES))} (the mixed precision "
                             f"of the reconstruction's training steps: 'off' = float32, 'bf16' = bfloat16 "
                             f"autocast), got {self.amp!r}")
        for name, v, lo in (("epochs", self.epochs, 0), ("sequences", self.sequences, 1), ("seed", self.seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ReconOptions.{name} must be an int >= {lo}, got {v!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise ValueError(f"ReconOptions.lr must be a positive number or None, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"ReconOptions.weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class PTQConfig:
    """Quantize a model's linear layers.

    Args:
        weight: spec of every quantized layer's weight (a format name is accepted).
        act: spec of its input activation; ``None`` is weight-only (e.g. W4A16).
        method: a rounder (``rtn``, ``gptq``, ``lwc``, ``ptq161``), optionally after transforms
            joined with ``+``: ``"rotate+gptq"``, ``"smoothquant+rtn"``, ``"rotate+lwc"``, ``"awq"``
            (AWQ is a transform: ``awq`` alone means ``awq+rtn``). ``lwc`` (OmniQuant's learnable
            weight clipping) and ``ptq161`` learn by block-wise reconstruction (``recon``).
        overrides: ``(glob pattern, weight format or None, act format or None)`` per layer name;
            ``None`` keeps the layer in fp32 for that role. Later entries win.
        gptq: :class:`GPTQOptions`.
        smooth_alpha: SmoothQuant's migration strength.
        awq_grid: number of AWQ scale exponents searched in [0, 1].
        recon: :class:`ReconOptions` of ``lwc`` and ``ptq161``.
        nonfinite_tokens: what the calibrating methods (GPTQ, SmoothQuant, AWQ) do with a
            calibration token whose input to a layer holds a NaN or Inf: ``"error"`` (default)
            raises :class:`floatlab.ptq.calibration.CalibrationError` naming the layer;
            ``"exclude"`` leaves that token out of that layer's statistics (a warning gives the
            counts). See docs/ptq.md.
    """

    weight: QuantSpec | None
    act: QuantSpec | None = None
    method: str = "rtn"
    overrides: tuple = ()
    gptq: GPTQOptions = field(default_factory=GPTQOptions)
    smooth_alpha: float = 0.5
    awq_grid: int = 10
    nonfinite_tokens: str = "error"
    recon: ReconOptions = field(default_factory=ReconOptions)

    def __post_init__(self) -> None:
        if self.nonfinite_tokens not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite_tokens must be one of {NONFINITE_POLICIES}, got {self.nonfinite_tokens!r}")
        object.__setattr__(self, "weight", as_spec(self.weight))
        object.__setattr__(self, "act", as_spec(self.act))
        self.steps()  # validates the method
        ov = []
        for entry in self.overrides:
            pattern, w, a = entry
            ov.append((pattern, as_spec(w), as_spec(a)))
        object.__setattr__(self, "overrides", tuple(ov))

    def steps(self) -> tuple[tuple[str, ...], str]:
        """``(transforms, rounder)`` parsed from ``method``."""
        parts = [p.strip().lower() for p in self.method.split("+")]
        if not any(parts):
            raise ValueError("method is empty")
        if not all(parts):
            raise ValueError(f"method {self.method!r} has an empty step (a '+' with nothing on one side); "
                             "join whole methods, e.g. rotate+gptq")
        rounder = parts[-1] if parts[-1] in ROUNDERS else "rtn"
        transforms = tuple(parts[:-1] if parts[-1] in ROUNDERS else parts)
        for t in transforms:
            if t in ROUNDERS:
                raise ValueError(f"method {self.method!r}: {t!r} rounds the weights, so it must come last, and "
                                 "only one rounder may run (e.g. rotate+gptq, awq+lwc)")
            if t not in TRANSFORMS:
                known = ", ".join(ROUNDERS + TRANSFORMS)
                raise ValueError(f"unknown PTQ method part {t!r} in {self.method!r}; known: {known}")
        return transforms, rounder

    def specs(self) -> list[QuantSpec]:
        """Every weight spec the config can give a layer (the default and the overrides)."""
        return [s for s in (self.weight, *(w for _, w, _ in self.overrides)) if s is not None]

    def needs_calibration(self) -> bool:
        """Whether quantizing with this config runs calibration data: GPTQ, LWC, PTQ1.61,
        SmoothQuant and AWQ do, and so does a weight codec whose salient channels are chosen by
        calibration activation max."""
        transforms, rounder = self.steps()
        return (rounder in ("gptq", *RECONSTRUCTING) or any(t in CALIBRATING_TRANSFORMS for t in transforms)
                or any(s.is_codec and s.codec.needs_stats for s in self.specs()))

    def weight_spec(self, layer: str) -> QuantSpec | None:
        from floatlab.ptq.modules import spec_for
        return spec_for(layer, self.weight, {p: w for p, w, _ in self.overrides})

    def act_spec(self, layer: str) -> QuantSpec | None:
        from floatlab.ptq.modules import spec_for
        return spec_for(layer, self.act, {p: a for p, _, a in self.overrides})

    def label(self) -> str:
        w = str(self.weight) if self.weight else "fp32"
        a = str(self.act) if self.act else "-"
        return f"W:{w} A:{a} {self.method}"

    def to_dict(self) -> dict:
        return {
            "weight": self.weight.to_dict() if self.weight else None,
            "act": self.act.to_dict() if self.act else None,
            "method": self.method,
            "overrides": [[p, w.to_dict() if w else None, a.to_dict() if a else None] for p, w, a in self.overrides],
            "gptq": vars(self.gptq).copy(),
            "smooth_alpha": self.smooth_alpha,
            "awq_grid": self.awq_grid,
            "nonfinite_tokens": self.nonfinite_tokens,
            "recon": vars(self.recon).copy(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PTQConfig":
        return cls(weight=QuantSpec.from_dict(d["weight"]), act=QuantSpec.from_dict(d.get("act")),
                   method=d.get("method", "rtn"),
                   overrides=tuple((p, QuantSpec.from_dict(w), QuantSpec.from_dict(a)) for p, w, a in d.get("overrides", [])),
                   gptq=GPTQOptions(**d.get("gptq", {})), smooth_alpha=d.get("smooth_alpha", 0.5),
                   awq_grid=d.get("awq_grid", 10), nonfinite_tokens=d.get("nonfinite_tokens", "error"),
                   recon=ReconOptions(**d.get("recon", {})))
