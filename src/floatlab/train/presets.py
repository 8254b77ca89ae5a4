"""Experiment presets: model size, batch, steps. Sized for 2 CPU cores (see docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from floatlab.train.model import GPTConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: GPTConfig
    batch_size: int          # global batch (sequences)
    steps: int
    lr: float = 3e-3
    warmup: int = 10
    eval_every: int = 0      # 0: only at the end
    eval_batches: int = 4
    ckpt_every: int = 50

    def with_steps(self, steps: int | None) -> "Preset":
        """This preset with ``steps`` training steps (``None``: unchanged). Raises ``ValueError``
        for fewer than 1 step."""
        if steps is None:
            return self
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        return replace(self, steps=steps)


PRESETS = {
    "smoke": Preset("smoke", GPTConfig(block_size=32, n_layer=1, n_head=2, d_model=32), 8, 12,
                    warmup=3, eval_batches=2, ckpt_every=6),
    "small": Preset("small", GPTConfig(block_size=64, n_layer=2, n_head=4, d_model=64), 16, 600,
                    warmup=20, eval_every=100, eval_batches=8, ckpt_every=50),
    "paper": Preset("paper", GPTConfig(block_size=256, n_layer=6, n_head=6, d_model=384), 64, 5000,
                    lr=1e-3, warmup=200, eval_every=500, eval_batches=20, ckpt_every=250),
}


def get_preset(name: str) -> Preset:
    """A preset by name (case-insensitive). Raises ``ValueError`` naming the closest presets."""
    key = str(name).strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    import difflib
    close = difflib.get_close_matches(key, list(PRESETS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown preset {name!r}.{hint} Choose from {', '.join(PRESETS)}")
