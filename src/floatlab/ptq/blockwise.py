"""Block-by-block PTQ for causal LMs larger than memory (``floatlab ptq --blockwise``).

The model is built without weights (:func:`floatlab.models.lazy.load_lazy`); the embeddings,
final norm and LM head are read from the checkpoint, then one transformer block at a time:

1. its weights are read (safetensors, memory-mapped) and its inputs are known: the first block's
   are captured from the model's own forward pass, each later block's are the previous block's
   outputs, kept for the calibration texts (fp32 model) and the evaluation windows (quantized
   model);
2. the fp32 block computes the next block's calibration inputs;
3. the block is quantized by :func:`floatlab.ptq.apply.quantize_model` itself, on a holder
   module that carries the block under its own name (``model.layers.7``) and runs it on the
   captured inputs, so every method sees exactly what it sees in the whole model: RTN, GPTQ
   (one block's Hessians at a time), SmoothQuant, AWQ, weight codecs, per-layer overrides;
4. the quantized block computes the next block's evaluation inputs, its tensors are written to
   ``quantized-block-NNNNN.safetensors`` and its weights leave memory.

Finally the LM head scores the quantized evaluation windows (perplexity, as
:func:`floatlab.ptq.compare.measure_single`). Calibration statistics come from the fp32 model's
activations, as in whole-model mode, so the result equals whole-model PTQ bit for bit (tested:
every stored tensor and the metric) and ``floatlab eval DIR`` reproduces it. Peak memory: the
embeddings and head, one block, and the calibration/evaluation activations.

Not block by block (refused with a clear error): ``rotate`` (it rotates the embeddings and the
LM head together with every block), the reconstruction methods ``lwc``/``ptq161`` (they feed
each block the quantized outputs of the blocks before, a second stream), encoders and
mixture-of-experts models stored with fused experts.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from floatlab import progress as _progress

__all__ = ["BlockwiseError", "check_blockwise", "quantize_blockwise"]


class BlockwiseError(ValueError):
    """A model or method that block-by-block PTQ cannot handle (the message says what to do)."""


def check_blockwise(config, kind: str) -> None:
    """Refuse, before any work, what block-by-block PTQ cannot do (see the module docstring)."""
    transforms, rounder = config.steps()
    if kind != "causal_lm":
        raise BlockwiseError("block-by-block PTQ is for causal LMs (the models that outgrow memory); quantize an "
                             "encoder in whole-model mode (without --blockwise)")
    if "rotate" in transforms:
        raise BlockwiseError("'rotate' rotates the embeddings and the LM head together with every block: it is not "
                             "block by block; use rtn, gptq, smoothquant or awq with --blockwise, or drop --blockwise")
    if rounder not in ("rtn", "gptq"):
        raise BlockwiseError(f"{rounder!r} feeds every block the quantized outputs of the blocks before (a second "
                             "stream of activations) and is not available block by block yet; use rtn or gptq with "
                             "--blockwise, or drop --blockwise")


class _Stop(Exception):
    pass


@torch.no_grad()
def _capture(model: nn.Module, block: nn.Module, batches: list[dict]) -> list[tuple[tuple, dict]]:
    """``(args, kwargs)`` the model passes ``block`` for each batch (the forward stops there). A
    key/value cache the model made for the forward pass is replaced by ``None``: a block runs
    several times on its captured inputs (fp32, calibration, quantized), and a cache would grow
    with every run (attention over stale keys)."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:                      # pragma: no cover - transformers is needed to load a model
        Cache = ()
    seen = []

    def hook(mod, args, kwargs):
        kwargs = {k: (None if isinstance(v, Cache) else v) for k, v in kwargs.items()}
        seen.append((args, kwargs))
        raise _Stop

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in batches:
            try:
                model(**b)
            except _Stop:
                pass
    finally:
        h.remove()
    return seen


def _hidden(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _like(out, hidden):
    """``hidden`` in the structure a block returned (a tensor, or a tuple led by it); ``out``: a
    block's output or its :func:`_structure`."""
    return hidden if out is None or isinstance(out, torch.Tensor) else (hidden, *out[1:])


def _structure(out):
    """What :func:`_like` needs of a block's output, without its hidden states (a placeholder
    module kept for every block must not hold a ``(windows, tokens, hidden)`` tensor each)."""
    return None if isinstance(out, torch.Tensor) else (None, *out[1:])


@torch.no_grad()
def _run(block: nn.Module, stream: list[tuple[tuple, dict]]) -> tuple[list[tuple[tuple, dict]], object]:
    """The block on every input of ``stream``: the next block's inputs, and one raw output."""
    nxt, raw = [], None
    for args, kwargs in stream:
        raw = block(*args, **kwargs)
        nxt.append(((_hidden(raw), *args[1:]), kwargs))
    return nxt, raw


class _Holder(nn.Module):
    """Carries one block under its own dotted name (``model.layers.7``: placeholders before it)
    and runs it on captured inputs: ``holder(_i=k)`` is the block on the ``k``-th of them."""

    def __init__(self, prefix: str, index: int, block: nn.Module, stream: list[tuple[tuple, dict]]):
        super().__init__()
        parts = prefix.split(".")
        cur = self
        for p in parts[:-1]:
            child = nn.Module()
            setattr(cur, p, child)
            cur = child
        setattr(cur, parts[-1], nn.ModuleList([nn.Identity() for _ in range(index)] + [block]))
        object.__setattr__(self, "_block", block)          # not registered twice (no "_block." state)
        object.__setattr__(self, "_stream", stream)

    def forward(self, _i: int, attention_mask=None):
        args, kwargs = self._stream[_i]
        return self._block(*args, **kwargs)


class _Replay(nn.Module):
    """Stands for the first block when the LM head scores the final activations: returns the
    ``k``-th stored hidden state on its ``k``-th call (later blocks pass it through)."""

    def __init__(self, hidden: list[torch.Tensor], like):
        super().__init__()
        self.hidden, self.like, self.k = hidden, like, 0

    def forward(self, x, *args, **kwargs):
        h = self.hidden[self.k]
        self.k += 1
        return _like(self.like, h)


class _Pass(nn.Module):
    def __init__(self, like):
        super().__init__()
        self.like = like

    def forward(self, x, *args, **kwargs):
        return _like(self.like, x)


def quantize_blockwise(lm, config, calib: list[dict], windows: torch.Tensor, out, *, bos: bool = False,
                       command: str | None = None, data: dict | None = None, batch_size: int = 4) -> dict:
    """Quantize the lazily loaded causal LM ``lm`` (:func:`floatlab.models.lazy.load_lazy`) block by
    block with ``config`` and write the result into ``out`` (the layout of
    :func:`floatlab.ptq.io.save_quantized`, tensors in one file per block). ``calib``:
    calibration batches (``input_ids``); ``windows``: the evaluation windows (with BOS in front
    when ``bos``). Returns the metric (``{"windows", "window", "perplexity"[, "bos"]}``), which
    is also recorded in ``config.json``. Raises :class:`BlockwiseError` for what it cannot do
    (before any work) and the errors of :func:`floatlab.ptq.apply.quantize_model`."""
    import floatlab
    from floatlab.atomic import write_json
    from floatlab.eval import metrics
    from floatlab.models.lazy import unload
    from floatlab.models.loading import block_list, linear_layers
    from floatlab.parallel import release_memory
    from floatlab.provenance import environment
    from floatlab.ptq.apply import quantize_model
    from floatlab.ptq.io import CONFIG, FORMAT_VERSION, _describe, model_fingerprint
    from floatlab.ptq.modules import QuantLinear

    check_blockwise(config, lm.kind)
    model, ckpt = lm.model, lm.checkpoint
    found = block_list(model)
    if found is None:
        raise BlockwiseError("the model has no list of transformer blocks holding linear layers")
    prefix, blocks = found
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)
    for stale in out.glob("quantized*.safetensors"):
        stale.unlink()
    t0 = time.time()
    ckpt.load_into(model, exclude=prefix)                       # embeddings, final norm, LM head
    win_batches = [{"input_ids": windows[i:i + batch_size]} for i in range(0, len(windows), batch_size)]
    cal_stream = _capture(model, blocks[0], calib) if calib else []
    eval_stream = _capture(model, blocks[0], win_batches)
    files, layers, transforms, like = [], [], {}, None
    with _progress.task("blockwise", len(blocks), "blocks") as task:
        for i in range(len(blocks)):
            block = blocks[i]
            name = f"{prefix}.{i}"
            ckpt.load_into(model, name)
            if cal_stream:
                nxt_cal, _ = _run(block, cal_stream)
            # every module of the block, taken before quantize_model swaps its nn.Linear modules
            # out: their weights are freed below even where a caller still holds those modules
            # (floatlab ptq's layer checks hold every nn.Linear of the model)
            modules = list(block.modules())
            holder = _Holder(prefix, i, block, cal_stream)
            names = list(linear_layers(holder))
            quantized = any(config.weight_spec(n) is not None or config.act_spec(n) is not None for n in names)
            qweights = {}
            if quantized:
                with _progress.scope(name):
                    qweights = quantize_model(holder, config, calib=[{"_i": k} for k in range(len(cal_stream))])
            eval_stream, raw = _run(block, eval_stream)
            like = _structure(raw)
            del raw
            tensors = {}
            for n, qw in qweights.items():
                tensors.update(qw.tensors(n))
            qmods = {n: m for n, m in holder.named_modules() if isinstance(m, QuantLinear)}
            for n, m in qmods.items():
                if m.input_transform is not None:
                    transforms[n] = _describe(m.input_transform)
            for key, t in holder.state_dict().items():
                if key.rsplit(".", 1)[0] in qweights and key.endswith(".weight"):
                    continue
                tensors[key] = t.detach().cpu().contiguous().clone()
            layers += sorted(qweights)
            fname = f"quantized-block-{i:05d}.safetensors"
            floatlab.save(out / fname, tensors)
            files.append(fname)
            if cal_stream:
                cal_stream = nxt_cal
            del holder, qweights, tensors, qmods
            # the block leaves memory: its (quantized) linears become empty placeholders
            blocks[i] = _Pass(like)
            for m in modules:
                unload(m)
            del block, modules
            release_memory()
            task.advance(1, note=name)
    # the LM head scores the quantized model's final activations
    blocks[0] = _Replay([args[0] for args, _ in eval_stream], like)
    for j in range(1, len(blocks)):
        blocks[j] = _Pass(like)
    ppl = metrics.perplexity(model, windows, batch_size=batch_size, bos=bos)
    metric = {"windows": len(windows), "window": windows.shape[1] - (1 if bos else 0), "perplexity": ppl,
              **({"bos": True} if bos else {})}
    rest = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if not k.startswith(prefix + ".")}
    floatlab.save(out / "quantized-rest.safetensors", rest)
    files.append("quantized-rest.safetensors")
    cfg = {"floatlab_ptq": FORMAT_VERSION, "model": lm.name if lm.name in ("minilm", "smollm2") else str(Path(lm.folder).resolve()),
           "model_type": lm.model_type, "kind": lm.kind, "baseline_note": lm.baseline_note,
           "ptq": config.to_dict(), "layers": sorted(layers), "input_transforms": transforms,
           "untied_lm_head": False, "weight_files": files, "blockwise": True,
           "model_fingerprint": model_fingerprint(lm.folder), "data": data, "metric": metric,
           "command": command, "seconds": time.time() - t0, "environment": environment()}
    write_json(out / CONFIG, cfg)
    return metric
