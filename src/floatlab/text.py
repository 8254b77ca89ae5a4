"""Small helpers for the words floatlab prints."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` in the number ``n`` asks for: ``plural(1, "thread")`` is ``'1 thread'``,
    ``plural(2, "thread")`` ``'2 threads'``; ``many`` spells an irregular plural
    (``plural(2, "process", "processes")``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
