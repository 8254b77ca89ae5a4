"""Offline text corpora and a deterministic batch order.

Byte-level tokens (vocabulary 256), so no tokenizer is needed. The default corpus is
``pydoc_data.topics`` (Python's own documentation topics, ~0.46 MB, always installed); any text
file can be used with ``file:PATH``. The batch of step ``s`` depends only on ``(seed, s)``: a
resumed or distributed run sees exactly the same data (each rank takes its slice of the global
batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

VAL_FRACTION = 0.1


def load_text(corpus: str = "pydoc") -> str:
    if corpus == "pydoc":
        import pydoc_data.topics as topics
        return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    if corpus.startswith("file:"):
        return Path(corpus[5:]).read_text(encoding="utf-8", errors="replace")
    raise ValueError(f"unknown corpus {corpus!r}: use 'pydoc' or 'file:PATH'")


@dataclass
class Corpus:
    train: torch.Tensor   # uint8 tokens
    val: torch.Tensor

    @classmethod
    def load(cls, corpus: str = "pydoc") -> "Corpus":
        data = torch.frombuffer(bytearray(load_text(corpus).encode("utf-8")), dtype=torch.uint8)
        n = int(len(data) * (1 - VAL_FRACTION))
        return cls(data[:n].clone(), data[n:].clone())

    def batch(self, split: str, step: int, batch_size: int, block: int, seed: int,
              rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Global batch ``batch_size`` of step ``step``; this rank's ``batch_size // world`` rows."""
        data = self.train if split == "train" else self.val
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) * 7 + (split != "train"))
        starts = torch.randint(0, len(data) - block - 1, (batch_size,), generator=g)
        per = batch_size // world
        starts = starts[rank * per:(rank + 1) * per]
        idx = starts[:, None] + torch.arange(block + 1)
        chunk = data[idx].to(torch.int64)
        return chunk[:, :-1], chunk[:, 1:]
