"""Image models for ``floatlab train --task fashion-mnist``: an MLP and a small CNN.

Layer names are chosen so the built-in keep patterns (``*head``, ``*norm*``...) match none of
them: every recipe quantizes every ``nn.Linear`` and ``nn.Conv2d`` (batch norms are not GEMMs and
stay float32). ELB-NN's ``@first``/``@last`` rules pick ``conv1``/``fc1`` and ``fc2``/``fc3``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ImageModelConfig:
    """``kind``: ``"mlp"`` or ``"cnn"``; ``width``: the MLP's hidden width, or the CNN's first
    conv's channels (the second has twice as many); ``hidden``: the CNN's fully connected width."""

    kind: str = "cnn"
    width: int = 16
    hidden: int = 128
    in_shape: tuple[int, int, int] = (1, 28, 28)
    classes: int = 10

    def to_dict(self) -> dict:
        d = asdict(self)
        d["in_shape"] = list(self.in_shape)
        return d


class MLP(nn.Module):
    """``flatten -> fc1 -> ReLU -> fc2 -> ReLU -> fc3``, widths ``width``, ``width // 2``."""

    def __init__(self, cfg: ImageModelConfig) -> None:
        super().__init__()
        n = cfg.in_shape[0] * cfg.in_shape[1] * cfg.in_shape[2]
        self.fc1 = nn.Linear(n, cfg.width)
        self.fc2 = nn.Linear(cfg.width, cfg.width // 2)
        self.fc3 = nn.Linear(cfg.width // 2, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class CNN(nn.Module):
    """Two 3x3 conv blocks (conv, batch norm, ReLU, 2x2 max pool), then ``fc1 -> ReLU -> fc2``:
    the "2 Conv+pooling+BN" shape of Fashion-MNIST's benchmark table."""

    def __init__(self, cfg: ImageModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.in_shape
        self.conv1 = nn.Conv2d(c, cfg.width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.width)
        self.conv2 = nn.Conv2d(cfg.width, 2 * cfg.width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * cfg.width)
        self.fc1 = nn.Linear(2 * cfg.width * (h // 4) * (w // 4), cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


MODELS = {"mlp": MLP, "cnn": CNN}


def build_model(cfg: ImageModelConfig) -> nn.Module:
    """The model ``cfg.kind`` names. Raises ``ValueError`` for an unknown kind."""
    try:
        return MODELS[cfg.kind](cfg)
    except KeyError:
        raise ValueError(f"unknown image model {cfg.kind!r}: choose from {', '.join(MODELS)}") from None
