"""``floatlab compare``: quantize one real model into many formats and rank them.

Encoders (MiniLM): the ranking metric is the cosine similarity of each text's sentence embedding
to the fp32 model's (mean over texts; the worst text is reported too), plus retrieval recall@1/@10
on the documentation task of :mod:`floatlab.eval.data` with 95% Wilson intervals and the paired
change vs fp32 with a bootstrap interval. Causal LMs: perplexity on non-overlapping windows of
Python's documentation. Both: per-layer output SQNR inside the quantized model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from floatlab import progress as _progress
from floatlab.eval import metrics
from floatlab.eval.data import perplexity_text, retrieval_subset
from floatlab.models.loading import LoadedModel, linear_layers
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import QuantSpec

DEFAULT_FORMATS = ("bf16", "e4m3", "e5m2", "hif8", "mxfp8_e4m3", "int8", "mxfp4", "nvfp4", "hif4", "int4")


@dataclass
class CompareOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    method: str = "rtn"
    weights_only: bool = False
    calib: int = 32                 # calibration texts/windows (GPTQ, AWQ, SmoothQuant)
    pairs: int = 64                 # retrieval pairs (encoders); 0 = all 511
    max_length: int = 64            # tokens per text (encoders)
    window: int = 256               # perplexity window (causal LMs)
    windows: int = 16               # perplexity windows (causal LMs)
    sqnr_texts: int = 8
    extra: dict = field(default_factory=dict)


def _encoder_inputs(lm: LoadedModel, texts, max_length):
    return dict(lm.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def calibration_batches(lm: LoadedModel, n: int, opts: CompareOptions, *, skip: int = 0) -> list[dict]:
    """Calibration inputs drawn from the same documentation, disjoint from the evaluated texts
    (encoders: passages not in the retrieval subset; causal LMs: windows after the evaluated ones)."""
    if n <= 0:
        return []
    if lm.kind == "encoder":
        from floatlab.eval.data import retrieval_pairs
        used = {p.query for p in retrieval_subset(opts.pairs or None)}
        pool = [p.passage for p in retrieval_pairs() if p.query not in used] or [p.passage for p in retrieval_pairs()]
        texts = pool[:n]
        return [_encoder_inputs(lm, texts[i:i + 8], opts.max_length) for i in range(0, len(texts), 8)]
    wins = metrics.token_windows(lm.tokenizer, perplexity_text(), opts.window)
    start = opts.windows if len(wins) > opts.windows + n else 0
    sel = wins[start:start + n]
    return [{"input_ids": sel[i:i + 4]} for i in range(0, len(sel), 4)]


def run_compare(lm: LoadedModel, opts: CompareOptions, *, progress=None, log=print) -> dict:
    """Quantize ``lm`` into every format of ``opts`` and measure; returns the results dict
    (with ``"environment"``: :func:`floatlab.provenance.environment`).

    Progress is reported through :mod:`floatlab.progress` (each format's steps under its name:
    ``mxfp4 / rtn: 36/36 layers``, ``mxfp4 / evaluate``) and, if given, to ``progress(label, k, total)``
    after each evaluation batch. Raises ``ValueError`` for a bad format name or method before any
    work."""
    from floatlab.provenance import environment

    t_all = time.time()
    for f in opts.formats:
        QuantSpec(f)  # fail early on a bad name
    names = list(linear_layers(lm.model))
    results = {"model": lm.name, "model_type": lm.model_type, "kind": lm.kind, "folder": str(lm.folder),
               "baseline_note": lm.baseline_note, "method": opts.method, "weights_only": opts.weights_only,
               "threads": torch.get_num_threads(), "environment": environment(), "rows": []}

    def steps(label, total, unit):
        """A progress task plus the caller's callback, as one ``advance(k)``."""
        task = _progress.task("evaluate", total, unit)

        def advance(k):
            task.advance(k)
            if progress:
                progress(label, k, total)
        return task, advance

    if lm.kind == "encoder":
        pairs = retrieval_subset(opts.pairs or None)
        texts = [p.query for p in pairs] + [p.passage for p in pairs]
        n = len(pairs)
        sq_in = _encoder_inputs(lm, texts[:opts.sqnr_texts], opts.max_length)
        mask = sq_in["attention_mask"]
        results["task"] = {"pairs": n, "texts": len(texts), "max_length": opts.max_length,
                           "source": "pydoc_data.topics (CPython documentation)"}

        def evaluate(model, label):
            with _progress.scope(label):
                task, advance = steps(label, len(texts), "texts")
                with task:
                    return metrics.embed(model, lm.tokenizer, texts, max_length=opts.max_length, progress=advance)
        t0 = time.time()
        ref = evaluate(lm.model, "fp32")
        ref_ret, ref_ranks = metrics.retrieval_metrics(ref[:n], ref[n:])
        ref_out = metrics.layer_outputs(lm.model, names, sq_in)
        results["fp32"] = {"retrieval": ref_ret.to_dict(), "seconds": time.time() - t0}
    else:
        wins = metrics.token_windows(lm.tokenizer, perplexity_text(), opts.window, opts.windows)
        sq_in = {"input_ids": wins[:2]}
        mask = None
        results["task"] = {"windows": len(wins), "window": opts.window, "tokens": int(wins.numel()),
                           "source": "pydoc_data.topics (CPython documentation)"}

        def evaluate_ppl(model, label):
            with _progress.scope(label):
                task, advance = steps(label, len(wins), "windows")
                with task:
                    return metrics.perplexity(model, wins, progress=advance)
        t0 = time.time()
        ppl = evaluate_ppl(lm.model, "fp32")
        ref_out = metrics.layer_outputs(lm.model, names, sq_in)
        results["fp32"] = {"perplexity": ppl, "seconds": time.time() - t0}

    calib = calibration_batches(lm, opts.calib, opts) if _needs_calib(opts.method) else []
    hessians = None
    for fmt in opts.formats:
        t0 = time.time()
        spec = QuantSpec(fmt)
        cfg = PTQConfig(weight=spec, act=None if opts.weights_only else spec, method=opts.method)
        if hessians is None and cfg.steps() == ((), "gptq"):   # the same for every format
            from floatlab.ptq.gptq import collect_hessians
            with _progress.scope("gptq hessians (shared by every format)"):
                hessians = collect_hessians(lm.model, linear_layers(lm.model), calib)
        model = copy.deepcopy(lm.model)
        with _progress.scope(fmt):                   # the PTQ steps report per layer under it
            quantize_model(model, cfg, calib=calib, hessians=hessians)
        t_quant = time.time() - t0
        row = {"format": fmt, "bits_per_value": spec.bits_per_value, "config": cfg.label()}
        if lm.kind == "encoder":
            e = evaluate(model, fmt)
            cos = metrics.cosine_to_reference(e, ref)
            ret, ranks = metrics.retrieval_metrics(e[:n], e[n:])
            d1 = metrics.paired_bootstrap_delta(ranks < 1, ref_ranks < 1)
            row.update({"cos_mean": cos["mean"], "cos_min": cos["min"], "cos_p05": cos["p05"],
                        "retrieval": ret.to_dict(), "recall_at_1": ret.recall_at_1,
                        "recall_at_10": ret.recall_at_10, "delta_recall_at_1": d1[0],
                        "delta_recall_at_1_ci": [d1[1], d1[2]],
                        "delta_recall_at_10": ret.recall_at_10 - ref_ret.recall_at_10})
        else:
            ppl_q = evaluate_ppl(model, fmt)
            row.update({"perplexity": ppl_q, "delta_perplexity": ppl_q - results["fp32"]["perplexity"]})
        sq = metrics.layer_sqnr(ref_out, model, sq_in, mask)
        row["layer_sqnr_db"] = sq
        finite = [v for v in sq.values() if math.isfinite(v)]
        row["min_layer_sqnr_db"] = min(finite) if finite else float("inf")
        row["seconds_quantize"] = t_quant
        row["seconds"] = time.time() - t0
        results["rows"].append(row)
        del model
    results["seconds_total"] = time.time() - t_all
    return results


def _needs_calib(method: str) -> bool:
    return any(p in method.lower() for p in ("gptq", "awq", "smoothquant"))


def measure_single(lm: LoadedModel, model, opts: CompareOptions, ref_model=None) -> dict:
    """The metric that ``floatlab ptq`` records and ``floatlab eval`` reproduces: encoders: mean
    and worst cosine to the fp32 model's embeddings and retrieval recall; causal LMs: perplexity."""
    if lm.kind == "encoder":
        pairs = retrieval_subset(opts.pairs or None)
        texts = [p.query for p in pairs] + [p.passage for p in pairs]
        n = len(pairs)
        with _progress.task("measure", len(texts), "texts") as task:
            e = metrics.embed(model, lm.tokenizer, texts, max_length=opts.max_length, progress=task.advance)
        ret, _ = metrics.retrieval_metrics(e[:n], e[n:])
        out = {"pairs": n, "recall_at_1": ret.recall_at_1, "recall_at_10": ret.recall_at_10,
               "embedding_sha": _tensor_digest(e)}
        if ref_model is not None:
            with _progress.task("measure fp32 reference", len(texts), "texts") as task:
                ref = metrics.embed(ref_model, lm.tokenizer, texts, max_length=opts.max_length, progress=task.advance)
            cos = metrics.cosine_to_reference(e, ref)
            out.update({"cos_mean": cos["mean"], "cos_min": cos["min"]})
        return out
    wins = metrics.token_windows(lm.tokenizer, perplexity_text(), opts.window, opts.windows)
    with _progress.task("measure", len(wins), "windows") as task:
        ppl = metrics.perplexity(model, wins, progress=task.advance)
    return {"windows": len(wins), "window": opts.window, "perplexity": ppl}


def _tensor_digest(t: torch.Tensor) -> str:
    import hashlib
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
