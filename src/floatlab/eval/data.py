"""Evaluation text that needs no download: Python's own documentation, as shipped with every
CPython in ``pydoc_data.topics`` (the language reference topics behind ``help()``; about 465k
characters in CPython 3.11).

* :func:`perplexity_text`: all topics, in sorted order, as one text (causal-LM perplexity).
* :func:`retrieval_pairs`: a retrieval task. Every prose paragraph of the documentation with at
  least two sentences (511 in CPython 3.11) gives one pair: the *query* is its first sentence, the *passage* is the
  rest of the paragraph (the query sentence removed, so the answer is never a verbatim match).
  The model must find, among all passages, the one that continues the query: the passages of a
  topic are about the same subject, so near-duplicates compete and formats separate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(*])")
_TITLE_RULE = re.compile(r"^[*=\-]{3,}$")


@lru_cache(maxsize=1)
def topics() -> tuple[tuple[str, str], ...]:
    """``(topic, text)`` for every topic of ``pydoc_data.topics``, sorted by name."""
    import pydoc_data.topics as t
    return tuple(sorted(t.topics.items()))


def perplexity_text() -> str:
    """The whole documentation as one text (topics in sorted order, separated by blank lines)."""
    return "\n\n".join(text.strip() for _, text in topics())


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs: blank-line separated, not code (no '>>>', not indented), no title rules."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines or any(_TITLE_RULE.match(ln.strip()) for ln in lines):
            continue
        if lines[0].startswith(("   ", "\t")) and ">>>" in block:
            continue
        if ">>>" in block or "..." in block[:4]:
            continue
        body = " ".join(ln.strip() for ln in lines)
        body = re.sub(r"\s+", " ", body).strip()
        if body:
            out.append(body)
    return out


@dataclass(frozen=True)
class RetrievalPair:
    topic: str
    query: str
    passage: str


@lru_cache(maxsize=4)
def retrieval_pairs(min_sentences: int = 2, min_query_words: int = 6,
                    max_query_words: int = 40) -> tuple[RetrievalPair, ...]:
    """Every (first sentence, rest of paragraph) pair of the documentation, in a fixed order."""
    pairs = []
    seen = set()
    for topic, text in topics():
        for para in _paragraphs(text):
            sents = _SENTENCE.split(para)
            if len(sents) < min_sentences:
                continue
            q, rest = sents[0], " ".join(sents[1:])
            nq = len(q.split())
            if not min_query_words <= nq <= max_query_words or len(rest.split()) < 12:
                continue
            if q in seen:
                continue
            seen.add(q)
            pairs.append(RetrievalPair(topic, q, rest))
    return tuple(pairs)


def retrieval_subset(n: int | None, seed: int = 0) -> list[RetrievalPair]:
    """``n`` pairs drawn without replacement with a fixed seed (all of them if ``n`` is None)."""
    import random
    pairs = list(retrieval_pairs())
    if n is None or n >= len(pairs):
        return pairs
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(pairs)), n))
    return [pairs[i] for i in idx]
