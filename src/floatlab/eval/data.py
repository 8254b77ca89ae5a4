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


# ---- a user's own text -------------------------------------------------------------------------
class DataError(ValueError):
    """A data file or folder that cannot be read as text (the message says what to do)."""


#: file name endings -> the ``datasets`` builder that reads them
DATA_SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
                 ".parquet": "parquet"}


@dataclass(frozen=True)
class TextData:
    """Texts to calibrate or evaluate on, and where they came from.

    ``texts``: the non-empty texts in file order (a text file: its paragraphs, separated by blank
    lines; JSON lines, parquet or a saved ``datasets`` folder: the values of ``text_field``).
    ``source``: a JSON-able record for results files: ``path`` (absolute), ``kind`` (``text``,
    ``json``, ``parquet``, ``datasets``, or ``builtin``), ``bytes``, ``sha256`` (of the file; of a
    folder, over its files' names and hashes; of the built-in text, over the text in UTF-8),
    ``texts``, ``characters`` and ``text_field``."""

    texts: tuple[str, ...]
    source: dict

    def joined(self) -> str:
        """All texts as one, separated by blank lines (what causal-LM windows are cut from)."""
        return "\n\n".join(self.texts)

    @property
    def sha256(self) -> str:
        return self.source["sha256"]


@lru_cache(maxsize=1)
def builtin_data() -> TextData:
    """The built-in text (:func:`perplexity_text`) as one :class:`TextData` with its hash."""
    import hashlib

    text = perplexity_text()
    return TextData((text,), {"path": None, "kind": "builtin", "source": "pydoc_data.topics (CPython documentation)",
                              "bytes": len(text.encode("utf-8")),
                              "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "texts": 1,
                              "characters": len(text), "text_field": None})


def _sha256_file(path, h=None):
    import hashlib

    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h


def _folder_digest(folder) -> tuple[str, int]:
    import hashlib

    h, size = hashlib.sha256(), 0
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        rel = p.relative_to(folder).as_posix()
        h.update(rel.encode() + b"\0" + _sha256_file(p).digest())
        size += p.stat().st_size
    return h.hexdigest(), size


def check_data_path(path, text_field: str | None = None) -> tuple["object", str]:
    """``(resolved Path, kind)`` of a data file or saved ``datasets`` folder, checked without
    reading it: it exists, is not empty, and has a known kind. Raises :class:`DataError`."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist")
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = sorted(q.name for q in p.iterdir() if q.is_dir())
            if len(splits) != 1:
                raise DataError(f"{p} is a saved DatasetDict with splits {', '.join(splits) or '(none)'}; pass the "
                                f"folder of one split (e.g. {p / (splits[0] if splits else 'train')})")
            return p.resolve(), "datasets"
        if (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            return p.resolve(), "datasets"
        raise DataError(f"{p} is a folder but not a saved `datasets` folder (no dataset_info.json/state.json "
                        "from Dataset.save_to_disk); pass a .txt, .jsonl or .parquet file, or a save_to_disk folder")
    kind = DATA_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: unknown data file type {p.suffix or '(no suffix)'!r}; floatlab reads text "
                        f"({', '.join(s for s, k in DATA_SUFFIXES.items() if k == 'text')}: paragraphs separated "
                        "by blank lines), JSON lines (.jsonl/.json), parquet (.parquet) and saved `datasets` folders")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty")
    return p.resolve(), kind


def load_texts(path, text_field: str | None = None) -> TextData:
    """Read a user's own texts through the ``datasets`` library, offline.

    ``path``: a text file (``.txt``, ``.text``, ``.md``: one text per paragraph, paragraphs
    separated by blank lines, line breaks kept), a JSON-lines file (``.jsonl``, or ``.json``
    holding JSON lines or an array of records), a parquet file, or a folder written by
    ``Dataset.save_to_disk`` (a ``DatasetDict`` folder with one split, or one split's folder).
    ``text_field``: the column holding the text (default ``"text"``; a text file has no columns
    and ignores it). Empty texts are dropped.

    Raises :class:`DataError` naming the problem and the fix: a path that does not exist, an
    empty file, an unknown file type, a file ``datasets`` cannot parse, no column
    ``text_field`` (the columns are listed), values that are not strings, no non-empty text.
    Nothing is downloaded (``HF_DATASETS_OFFLINE=1``); the ``datasets`` cache goes to a
    temporary folder that is removed afterwards.
    """
    import os
    import shutil
    import tempfile

    p, kind = check_data_path(path, text_field)
    field = "text" if kind == "text" else (text_field or "text")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as err:
        raise DataError("reading your own data needs the `datasets` package: pip install 'floatlab[models]'") from err
    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp(prefix="floatlab-datasets-")
    try:
        try:
            if kind == "datasets":
                ds = datasets.load_from_disk(str(p), keep_in_memory=True)
                if isinstance(ds, datasets.DatasetDict):
                    ds = next(iter(ds.values()))
            elif kind == "text":
                ds = datasets.load_dataset("text", data_files=str(p), split="train", sample_by="paragraph",
                                           keep_linebreaks=True, cache_dir=cache, keep_in_memory=True)
            else:
                ds = datasets.load_dataset(kind, data_files=str(p), split="train", cache_dir=cache,
                                           keep_in_memory=True)
        except DataError:
            raise
        except Exception as err:            # datasets raises many kinds for a malformed file
            what = {"json": "JSON lines", "parquet": "parquet", "text": "UTF-8 text", "datasets": "a datasets folder"}
            raise DataError(f"{p} could not be read as {what[kind]}: {type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
        if field not in ds.column_names:
            raise DataError(f"{p} has no field {field!r}; its fields: {', '.join(ds.column_names) or '(none)'}; "
                            "pass the one that holds the text with --text-field (Python: text_field=)")
        values = ds[field]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{p}: field {field!r} holds {type(bad).__name__} values, not text; pass the field that holds "
                        f"the text with --text-field (fields: {', '.join(ds.column_names)})")
    texts = tuple(v.strip("\n") for v in values if v is not None and v.strip())
    if not texts:
        rows = f"{len(values)} row{'s' if len(values) != 1 else ''}"
        raise DataError(f"{p} holds no text ({rows}{' in ' + repr(field) if kind != 'text' else ''}, all empty)")
    if kind == "datasets":
        digest, size = _folder_digest(p)
    else:
        digest, size = _sha256_file(p).hexdigest(), p.stat().st_size
    return TextData(texts, {"path": str(p), "kind": kind, "bytes": size, "sha256": digest, "texts": len(texts),
                            "characters": sum(len(t) for t in texts),
                            "text_field": None if kind == "text" else field})
