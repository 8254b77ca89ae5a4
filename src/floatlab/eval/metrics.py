"""Model-level metrics: sentence embeddings and their similarity to fp32, retrieval recall with
confidence intervals, causal-LM perplexity, and per-layer output SQNR."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


# ---- sentence embeddings ---------------------------------------------------------------------
@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: list[str], *, batch_size: int = 32,
          max_length: int = 128, progress=None) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings (the sentence-transformers recipe of all-MiniLM-L6-v2).

    Texts are batched by length (less padding); the result is in the input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        e = torch.nn.functional.normalize(e.float(), dim=-1)
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
def token_windows(tokenizer, text: str, window: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``window`` tokens of ``text`` (the remainder is dropped)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    n = len(ids) // window
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {window}")
    return ids[: n * window].reshape(n, window)


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4, progress=None) -> float:
    """exp(mean next-token NLL) over all predicted tokens of the windows (each window alone)."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start:start + batch_size]
        logits = model(input_ids=ids).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                ids[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += ids[:, 1:].numel()
        if progress:
            progress(len(ids))
    return math.exp(total / count)


# ---- per-layer SQNR --------------------------------------------------------------------------
def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2); inf when equal."""
    num = float(ref.double().pow(2).sum())
    den = float((ref.double() - test.double()).pow(2).sum())
    if den == 0:
        return float("inf")
    return 10 * math.log10(num / den) if num > 0 else float("-inf")


@torch.no_grad()
def layer_outputs(model: nn.Module, names: list[str], inputs: dict) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules for one forward pass of ``model(**inputs)``."""
    out, hooks = {}, []
    for name in names:
        mod = model.get_submodule(name)
        hooks.append(mod.register_forward_hook(lambda m, a, y, name=name: out.__setitem__(name, y.detach())))
    try:
        model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return out


def layer_sqnr(ref_outputs: dict[str, torch.Tensor], model: nn.Module, inputs: dict,
               mask: torch.Tensor | None = None) -> dict[str, float]:
    """SQNR (dB) of every layer's output in ``model`` against the fp32 model's, same model input.

    The error is the one seen inside the quantized model (it accumulates over the layers).
    ``mask`` (batch, seq) keeps real tokens only."""
    test = layer_outputs(model, list(ref_outputs), inputs)
    res = {}
    for name, r in ref_outputs.items():
        t = test[name]
        if mask is not None:
            r, t = r[mask.bool()], t[mask.bool()]
        res[name] = sqnr_db(r, t)
    return res
