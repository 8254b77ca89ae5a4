"""Offline text corpora and a deterministic batch order.

Byte-level tokens (vocabulary 256), so no tokenizer is needed. The default corpus is
``pydoc_data.topics`` (Python's own documentation topics, ~0.46 MB, always installed); any text
file can be used with ``file:PATH``. The batch of step ``s`` depends only on ``(seed, s)``: a
resumed or distributed run sees exactly the same data (each rank takes its slice of the global
batch).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

VAL_FRACTION = 0.1


def load_text(corpus: str = "pydoc") -> str:
    """The text of ``corpus``: ``"pydoc"`` or ``"file:PATH"`` (UTF-8; bad bytes become U+FFFD).

    Raises:
        ValueError: an unknown corpus name (a path given without ``file:`` says so), a file that
            does not exist, is a folder, cannot be read or is empty.
    """
    if not isinstance(corpus, str):
        raise TypeError(f"corpus must be a string ('pydoc' or 'file:PATH'), got {type(corpus).__name__}")
    if corpus.strip().lower() == "pydoc":
        import pydoc_data.topics as topics
        return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    if corpus.startswith("file:"):
        path = Path(corpus[5:]).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ValueError(f"corpus file {str(path)!r} {what}; give 'file:PATH' to a text file")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise ValueError(f"cannot read corpus file {str(path)!r}: {err.strerror or err}") from None
        if not text:
            raise ValueError(f"corpus file {str(path)!r} is empty; give 'file:PATH' to a text file with "
                             "the training text (a few KB at least)")
        return text
    hint = f" (to use the file {corpus!r}, write 'file:{corpus}')" if Path(corpus).is_file() else ""
    raise ValueError(f"unknown corpus {corpus!r}: use 'pydoc' or 'file:PATH'{hint}")


@dataclass
class Corpus:
    train: torch.Tensor   # uint8 tokens
    val: torch.Tensor
    source: str = "tensors"   # what it was loaded from ('pydoc', 'file:PATH')

    @classmethod
    def load(cls, corpus: str = "pydoc") -> "Corpus":
        """Load and split ``corpus`` (see :func:`load_text`); raises ``ValueError`` as it does."""
        data = torch.frombuffer(bytearray(load_text(corpus).encode("utf-8")), dtype=torch.uint8)
        n = int(len(data) * (1 - VAL_FRACTION))
        return cls(data[:n].clone(), data[n:].clone(), corpus)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the train and validation tokens: identifies the data a run trained on."""
        h = hashlib.sha256()
        for t in (self.train, self.val):
            h.update(len(t).to_bytes(8, "little"))
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def check(self, block: int) -> None:
        """Raise ``ValueError`` unless both splits hold more than ``block + 1`` tokens (a batch
        row is ``block + 1`` consecutive bytes)."""
        need = block + 2
        if len(self.train) < need or len(self.val) < need:
            least = int(need / VAL_FRACTION) + 1
            raise ValueError(f"corpus {self.source!r} is too short: {len(self.train) + len(self.val)} bytes, "
                             f"but the validation split ({VAL_FRACTION:.0%}) needs at least {need} for the "
                             f"model's context of {block}; give at least {least} bytes")

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
