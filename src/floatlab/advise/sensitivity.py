"""How much each layer suffers in each format: measured, or a Fisher proxy (HAWQ-v3's kind).

**Measured** (:func:`measured_sensitivity`): for each quantizable layer and each candidate format,
only that layer is rounded (RTN, weight-only) and the model's *loss* is measured again; the
sensitivity is the loss minus the fp32 model's. Losses: encoders ``1 - mean cosine`` of the
sentence embeddings to the fp32 ones (the metric ``floatlab compare`` ranks by); causal LMs the
log perplexity (mean next-token NLL) on the evaluation windows. ``layers x formats`` forward
passes over the evaluation data.

**Fisher proxy** (:func:`fisher_sensitivity`, causal LMs): one backward pass per calibration
window (each window alone) gives the empirical Fisher diagonal of every layer's weight,
``F = mean over windows of T * g^2`` (``g`` the gradient of the window's mean next-token loss,
``T`` its predicted tokens: the mean of ``T`` per-token gradients has ``1/T`` of their variance,
so ``T g^2`` estimates the per-token Fisher); a format's sensitivity is
``0.5 * sum(F * (Q(W) - W)^2)``, the second-order change of the mean loss with the Fisher standing
in for the Hessian. (The first version squared the gradient of a whole calibration *batch*: two
samples for 8 windows, and about 1000x too small.) HAWQ-v3 (Yao et al.
2021) uses the Hessian trace (estimated by Hutchinson's method) times the squared quantization
error: ``mode="trace"`` gives that form, ``0.5 * mean(F) * ||Q(W) - W||^2`` (the Fisher's trace
estimates the Gauss-Newton Hessian's, in place of Hutchinson's estimate of the true Hessian's).
A single pass of calibration windows, then no forward pass per format.

Both are cached (:func:`cached`) under ``cache_dir()/advise`` keyed by the model, the formats and
the options, layer by layer, so an interrupted run resumes; progress goes through
:mod:`floatlab.progress`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from floatlab import progress as _progress
from floatlab.cache import cache_dir
from floatlab.models.loading import LoadedModel, linear_layers
from floatlab.ptq.compare import CompareOptions, calibration_batches, evaluation_texts, evaluation_windows
from floatlab.ptq.modules import QuantLinear, set_module
from floatlab.ptq.quantizer import QuantSpec
from floatlab.ptq.weights import rtn_weight


class LossFn:
    """The loss the advisor minimizes, measured on a model (lower is better) and shown as the
    model's metric: encoders ``1 - cos_mean`` (metric ``cos_mean``), causal LMs ``log(ppl)``
    (metric ``perplexity``). The fp32 reference (embeddings, windows) is computed once."""

    def __init__(self, lm: LoadedModel, opts: CompareOptions):
        from floatlab.eval import metrics

        self.lm, self.opts, self._m = lm, opts, metrics
        if lm.kind == "encoder":
            self.texts, _ = evaluation_texts(opts)
            self.ref = metrics.embed(lm.model, lm.tokenizer, self.texts, max_length=opts.max_length)
            self.metric_name = "cos_mean"
        else:
            self.bos = metrics.adds_bos(lm.tokenizer)
            self.windows = evaluation_windows(lm, opts, self.bos)
            self.metric_name = "perplexity"

    def loss(self, model) -> float:
        m = self._m
        if self.lm.kind == "encoder":
            e = m.embed(model, self.lm.tokenizer, self.texts, max_length=self.opts.max_length)
            return 1.0 - m.cosine_to_reference(e, self.ref)["mean"]
        return math.log(m.perplexity(model, self.windows, bos=self.bos))

    def metric(self, loss: float) -> float:
        return 1.0 - loss if self.lm.kind == "encoder" else math.exp(loss)

    def describe(self) -> dict:
        if self.lm.kind == "encoder":
            return {"loss": "1 - cos_mean", "texts": len(self.texts), "max_length": self.opts.max_length}
        return {"loss": "log perplexity", "windows": int(self.windows.shape[0]), "window": self.opts.window}


def quantized_weight(lin: torch.nn.Linear, spec: QuantSpec) -> torch.Tensor:
    """The RTN weight-only quantized weight of ``lin`` in ``spec`` (float32). Raises ``ValueError``
    for a codec that needs calibration statistics (a salient mask by activation max)."""
    if spec.is_codec and spec.codec.needs_stats:
        raise ValueError(f"{spec.format!r} chooses its salient channels from calibration activations; the advisor "
                         "measures RTN without calibration: use a weight-magnitude mask ('...wmag') instead")
    return rtn_weight(lin.weight, spec, None, None).dequantize().to(torch.float32)


def _key(lm: LoadedModel, what: str, formats, extra: dict) -> str:
    text = json.dumps({"model": lm.name, "type": lm.model_type, "what": what, "formats": list(formats), **extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(lm: LoadedModel, what: str, formats, extra: dict, compute, *, cache: Path | None | bool = None) -> dict:
    """``{layer: {format: sensitivity}}`` from the cache file or ``compute(done, save)`` (which
    fills ``done`` layer by layer and calls ``save()`` after each). ``cache=False`` never reads
    or writes; ``None`` uses ``cache_dir()/advise``."""
    if cache is False:
        out: dict = {}
        compute(out, lambda: None)
        return out
    folder = Path(cache) if cache else cache_dir() / "advise"
    path = folder / f"{what}-{_key(lm, what, formats, extra)}.json"
    done: dict = {}
    if path.exists():
        try:
            done = json.loads(path.read_text())["sensitivity"]
        except (ValueError, KeyError):
            done = {}

    def save() -> None:
        from floatlab.atomic import write_json
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, {"model": lm.name, "what": what, "formats": list(formats), "options": extra,
                          "sensitivity": done})
    compute(done, save)
    return done


def measured_sensitivity(lm: LoadedModel, formats, loss_fn: LossFn, *, layers: list[str] | None = None,
                         cache: Path | None | bool = None) -> tuple[dict, float]:
    """``({layer: {format: loss increase}}, fp32 loss)``: each layer alone in each format (RTN,
    weight-only), everything else fp32. ``layers``: a subset (default: every quantizable layer)."""
    model = lm.model
    all_layers = linear_layers(model)
    names = list(all_layers) if layers is None else list(layers)
    specs = {f: QuantSpec(f) for f in formats}
    base = loss_fn.loss(model)

    def compute(done: dict, save) -> None:
        todo = [n for n in names if not all(f in done.get(n, {}) for f in formats)]
        with _progress.task("sensitivity (measured)", len(names) * len(formats), "evaluations") as task:
            task.advance((len(names) - len(todo)) * len(formats))
            for name in todo:
                lin = all_layers[name]
                row = done.setdefault(name, {})
                for f in formats:
                    if f not in row:
                        q = quantized_weight(lin, specs[f])
                        set_module(model, name, QuantLinear(lin, q, specs[f], None))
                        try:
                            row[f] = loss_fn.loss(model) - base
                        finally:
                            set_module(model, name, lin)
                    task.advance(1, note=f"{name} {f}")
                save()
    extra = {**loss_fn.describe(), "layers": names}
    sens = cached(lm, "measured", formats, extra, compute, cache=cache)
    return {n: sens[n] for n in names}, base


def fisher_diagonal(lm: LoadedModel, batches: list[dict], layers: dict) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of every layer's weight: ``mean over windows of T * (dloss/dW)^2``,
    each calibration window (row of a batch) alone, ``loss`` its mean next-token loss over its
    ``T`` predicted tokens (see the module)."""
    model = lm.model
    if lm.kind != "causal_lm":
        raise ValueError(f"the Fisher proxy needs a next-token loss; {lm.name} is an {lm.kind} (use measured "
                         "sensitivities)")
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for lin in layers.values():
        lin.weight.requires_grad_(True)
        lin.weight.grad = None
    fisher = {n: torch.zeros_like(l.weight, dtype=torch.float32) for n, l in layers.items()}
    rows = [{k: v[i:i + 1] for k, v in b.items() if torch.is_tensor(v)} for b in batches
            for i in range(b["input_ids"].shape[0])]
    try:
        with _progress.task("sensitivity (Fisher): gradients", len(rows), "windows") as task:
            for r in rows:
                mask = r.get("attention_mask")
                tokens = int((mask[:, 1:].sum() if mask is not None else r["input_ids"].shape[1] - 1))
                if tokens < 1:
                    task.advance(1)
                    continue
                out = model(input_ids=r["input_ids"], attention_mask=mask, labels=r["input_ids"])
                out.loss.backward()
                for n, l in layers.items():
                    fisher[n] += tokens * l.weight.grad.detach().float() ** 2
                    l.weight.grad = None
                task.advance(1)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(req[n])
            p.grad = None
    return {n: f / max(1, len(rows)) for n, f in fisher.items()}


def fisher_sensitivity(lm: LoadedModel, formats, opts: CompareOptions, *, mode: str = "diag",
                       calib: int = 8, cache: Path | None | bool = None) -> dict:
    """``{layer: {format: 0.5 * sum(F * dW^2)}}`` (``mode="diag"``) or ``0.5 * mean(F) *
    ||dW||^2`` (``mode="trace"``, HAWQ-v3's form), ``F`` the empirical Fisher diagonal over
    ``calib`` calibration windows (:func:`fisher_diagonal`)."""
    if mode not in ("diag", "trace"):
        raise ValueError(f"mode must be 'diag' or 'trace', got {mode!r}")
    layers = linear_layers(lm.model)
    specs = {f: QuantSpec(f) for f in formats}

    def compute(done: dict, save) -> None:
        if all(all(f in done.get(n, {}) for f in formats) for n in layers):
            return
        F = fisher_diagonal(lm, calibration_batches(lm, calib, opts), layers)
        with _progress.task("sensitivity (Fisher): formats", len(layers) * len(formats), "layers x formats") as task:
            for name, lin in layers.items():
                w = lin.weight.detach().float()
                row = done.setdefault(name, {})
                for f in formats:
                    d2 = (quantized_weight(lin, specs[f]) - w) ** 2
                    s = (F[name] * d2).sum() if mode == "diag" else F[name].mean() * d2.sum()
                    row[f] = 0.5 * float(s)
                    task.advance(1, note=f"{name} {f}")
            save()
    extra = {"mode": mode, "calib": calib, "window": opts.window, "estimator": "per-window T g^2"}
    return cached(lm, f"fisher-{mode}", formats, extra, compute, cache=cache)


def check_layers(names: list[str], count: int) -> list[str]:
    """``count`` layers spread evenly over ``names`` (first and last included), in model order."""
    if count >= len(names):
        return list(names)
    if count == 1:
        return [names[len(names) // 2]]
    idx = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)})
    return [names[i] for i in idx]


def rank_agreement(proxy: dict, measured: dict, formats) -> dict:
    """How well a proxy ranks what was measured, on the layers of ``measured``: Spearman's rank
    correlation over every (layer, format) pair, across layers within each format (what decides
    which layers get the wide format), and over the cost-relevant *differences* (each format's
    sensitivity minus the layer's widest candidate's, i.e. what a downgrade costs); plus the
    ratio of the proxy's sum to the measured sum (the proxy's scale)."""
    from scipy.stats import spearmanr

    names = list(measured)
    fm = list(formats)

    def rho(a, b) -> float | None:
        if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
            return None
        r = spearmanr(a, b).statistic
        return None if r != r else float(r)

    pa = [proxy[n][f] for n in names for f in fm]
    ma = [measured[n][f] for n in names for f in fm]
    per = {f: rho([proxy[n][f] for n in names], [measured[n][f] for n in names]) for f in fm}
    wide = fm[-1]
    pd = [proxy[n][f] - proxy[n][wide] for n in names for f in fm[:-1]]
    md = [measured[n][f] - measured[n][wide] for n in names for f in fm[:-1]]
    return {"layers": names, "pairs": len(pa), "spearman_all": rho(pa, ma), "spearman_per_format": per,
            "spearman_downgrade": rho(pd, md), "downgrade_from": wide,
            "sum_ratio_proxy_to_measured": (sum(pa) / sum(ma)) if sum(ma) else None}
