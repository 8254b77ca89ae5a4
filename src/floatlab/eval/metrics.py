"""Model-level metrics: sentence embeddings and their similarity to fp32, retrieval recall with
confidence intervals, causal-LM perplexity, and per-layer output SQNR."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from floatlab.text import plural


# ---- sentence embeddings ---------------------------------------------------------------------
@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: list[str], *, batch_size: int = 32,
          max_length: int = 128, progress=None) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings (the sentence-transformers recipe of all-MiniLM-L6-v2).

    Texts are batched by length (less padding); the result ``(texts, hidden)`` float32 on the CPU
    is in the input order. Inputs go to the model's device."""
    device = _device(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        e = torch.nn.functional.normalize(e.float(), dim=-1).cpu()
        for k, i in enumerate(idx):
            out[i] = e[k]
        if progress:
            progress(len(idx))
    return torch.stack(out)


def cosine_to_reference(e: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per-text cosine similarity of (normalized) embeddings to the fp32 ones: mean and worst."""
    cos = (torch.nn.functional.normalize(e, dim=-1) * torch.nn.functional.normalize(ref, dim=-1)).sum(-1)
    cos = cos.double()
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p05": float(torch.quantile(cos, 0.05))}


# ---- retrieval -------------------------------------------------------------------------------
def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def retrieval_ranks(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of passage i for query i among all passages, by cosine similarity."""
    sims = q @ p.T
    target = sims.diagonal().unsqueeze(1)
    return (sims > target).sum(1)


def recall_at(ranks: torch.Tensor, k: int) -> float:
    return float((ranks < k).double().mean())


def paired_bootstrap_delta(hit: torch.Tensor, hit_ref: torch.Tensor, n_boot: int = 2000,
                           seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of ``mean(hit) - mean(hit_ref)`` (paired by query)."""
    d = hit.double() - hit_ref.double()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(d), (n_boot, len(d)), generator=g)
    means = d[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


@dataclass
class RetrievalResult:
    n: int
    recall_at_1: float
    recall_at_1_ci: tuple[float, float]
    recall_at_10: float
    recall_at_10_ci: tuple[float, float]
    mrr: float

    def to_dict(self) -> dict:
        return asdict(self)


def retrieval_metrics(q: torch.Tensor, p: torch.Tensor) -> tuple[RetrievalResult, torch.Tensor]:
    ranks = retrieval_ranks(q, p)
    n = len(ranks)
    k1, k10 = int((ranks < 1).sum()), int((ranks < 10).sum())
    res = RetrievalResult(n, k1 / n, wilson_interval(k1, n), k10 / n, wilson_interval(k10, n),
                          float((1.0 / (ranks.double() + 1)).mean()))
    return res, ranks


# ---- perplexity ------------------------------------------------------------------------------
def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS token in front of a text by default (Gemma, Llama and
    OPT's tokenizers do; Qwen's and GPT-2's do not). Decided by encoding one word with
    and without special tokens: ``True`` when the default encoding is the plain one with
    ``bos_token_id`` in front."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    return len(full) > len(plain) and full[0] == bos and full[1:1 + len(plain)] == plain


def token_windows(tokenizer, text: str, window: int, max_windows: int | None = None, *,
                  bos: bool | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``window`` tokens of ``text`` (the remainder is dropped), int64
    ``(n, window)``; with ``bos`` (default: :func:`adds_bos`, the tokenizer's own convention) each
    window gets the BOS token in front: ``(n, window + 1)``, the same text tokens after it.
    Raises ``ValueError`` when the text is shorter than one window."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    n = len(ids) // window
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {plural(len(ids), 'token')}, fewer than one window of {window}")
    wins = ids[: n * window].reshape(n, window)
    if adds_bos(tokenizer) if bos is None else bos:
        wins = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=wins.dtype), wins], 1)
    return wins


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4, progress=None,
               bos: bool = False) -> float:
    """exp(mean next-token NLL) over the windows (each window alone), ``windows (n, length)``.

    The targets are the text tokens after the first one of each window, also with ``bos`` (the
    windows start with a BOS token, :func:`token_windows`): the BOS token gives the model the
    context it was trained with, and the same targets are scored with and without it (the first
    text token, predicted from BOS alone, is not counted). Inputs go to the model's device."""
    device = _device(model)
    skip = 1 if bos else 0
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start:start + batch_size].to(device)
        logits = model(input_ids=ids).logits
        tgt = ids[:, skip + 1:]
        nll = _nll_sum(logits, tgt, skip)
        del logits
        total += float(nll)
        count += tgt.numel()
        if progress:
            progress(len(ids))
    return math.exp(total / count)


def _nll_sum(logits: torch.Tensor, tgt: torch.Tensor, skip: int) -> torch.Tensor:
    """``cross_entropy(logits[:, skip:-1].reshape(-1, vocab), tgt.reshape(-1), reduction="sum")``,
    the same number bit for bit, without its two vocabulary-sized copies of the whole batch (the
    reshape of the non-contiguous slice and the log-softmax: 2 x batch x window x vocab floats,
    0.4 GiB for 4 windows of 256 tokens over a 49,152-token vocabulary).

    ``cross_entropy`` is ``nll_loss(log_softmax(x))``; the log-softmax of a row does not depend on
    the other rows, so it is taken one window at a time and only the target's value is kept;
    ``nll_loss`` then sums those values in its own order (it reads nothing else of its input),
    here from an ``(n, 1)`` input whose single class is every target."""
    picked = torch.empty(tgt.shape, dtype=torch.float32, device=logits.device)
    for b in range(logits.shape[0]):
        logp = torch.log_softmax(logits[b, skip:-1].float(), dim=-1)
        picked[b] = logp.gather(-1, tgt[b].unsqueeze(-1)).squeeze(-1)
        del logp
    zeros = torch.zeros(tgt.numel(), dtype=torch.long, device=logits.device)
    return torch.nn.functional.nll_loss(picked.reshape(-1, 1), zeros, reduction="sum")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---- per-layer SQNR --------------------------------------------------------------------------
def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2); inf when equal."""
    num = float(ref.double().pow(2).sum())
    den = float((ref.double() - test.double()).pow(2).sum())
    if den == 0:
        return float("inf")
    return 10 * math.log10(num / den) if num > 0 else float("-inf")


class SpilledOutputs(Mapping):
    """A read-only ``{name: tensor}`` kept in an anonymous temporary file (``tempfile``: the
    system's temporary folder, ``TMPDIR``) instead of memory: each access reads that tensor back
    (a new CPU tensor, the same bytes). :func:`layer_outputs` fills one with ``spill=True`` so
    that the fp32 reference outputs of ``floatlab compare``'s SQNR column stay out of memory."""

    def __init__(self):
        import tempfile

        self._file = tempfile.TemporaryFile()
        self._where: dict[str, tuple[int, tuple, torch.dtype]] = {}

    def __setitem__(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().cpu().contiguous()
        self._file.seek(0, 2)
        where = self._file.tell()
        self._file.write(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
        self._where[name] = (where, tuple(t.shape), t.dtype)

    def __getitem__(self, name: str) -> torch.Tensor:
        where, shape, dtype = self._where[name]
        out = torch.empty(shape, dtype=dtype)
        if out.numel():
            self._file.seek(where)
            self._file.readinto(memoryview(out.view(torch.uint8).reshape(-1).numpy()))
        return out

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        self._file.close()


@torch.no_grad()
def layer_outputs(model: nn.Module, names: list[str], inputs: dict, *, spill: bool = False):
    """Outputs of the named submodules for one forward pass of ``model(**inputs)`` (inputs moved
    to the model's device), on the CPU; with ``spill``, a :class:`SpilledOutputs` (each output
    written to a temporary file as its layer runs) instead of a dict."""
    out, hooks = (SpilledOutputs() if spill else {}), []
    for name in names:
        mod = model.get_submodule(name)
        hooks.append(mod.register_forward_hook(lambda m, a, y, name=name: out.__setitem__(name, y.detach().cpu())))
    device = _device(model)
    try:
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
    finally:
        for h in hooks:
            h.remove()
    return out


def layer_sqnr(ref_outputs: dict[str, torch.Tensor], model: nn.Module, inputs: dict,
               mask: torch.Tensor | None = None) -> dict[str, float]:
    """SQNR (dB) of every layer's output in ``model`` against the fp32 model's, same model input.

    The error is the one seen inside the quantized model (it accumulates over the layers).
    ``mask`` (batch, seq) keeps real tokens only. A mixture-of-experts expert whose routed tokens
    differ from the fp32 model's (another token count, or it did not run) gets NaN: its outputs
    cannot be paired.

    Each layer's SQNR is taken as soon as that layer has run (its output is not kept: the
    quantized model's outputs of every layer at once would be as large as ``ref_outputs``); a
    layer that runs twice is scored on its last output."""
    got: dict[str, float] = {}
    keep = None if mask is None else mask.bool()

    def score(name: str, y: torch.Tensor) -> None:
        r, t = ref_outputs[name], y.detach().cpu()
        if t.shape != r.shape:
            got[name] = float("nan")
            return
        if keep is not None:
            r, t = r[keep], t[keep]
        got[name] = sqnr_db(r, t)

    hooks = [model.get_submodule(name).register_forward_hook(lambda m, a, y, name=name: score(name, y))
             for name in ref_outputs]
    device = _device(model)
    try:
        with torch.no_grad():
            model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
    finally:
        for h in hooks:
            h.remove()
    return {name: got.get(name, float("nan")) for name in ref_outputs}
