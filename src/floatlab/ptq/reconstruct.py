"""Block-wise reconstruction: learn a quantizer's parameters one transformer block at a time
(OmniQuant, Shao et al. 2024, arXiv 2308.13137; PTQ1.61, Zhao et al., ACL 2025).

For every block (``model.layers.N`` of a Llama-family model, ``encoder.layer.N`` of BERT), in
order:

1. its inputs on the calibration sequences are known: the first block's are captured from the
   model (embeddings), later ones are the previous block's outputs. Two streams run side by side:
   the full-precision model's (``fp_in``) and the quantized model's (``q_in``, the outputs of the
   already quantized blocks). Both are checked with :func:`floatlab.ptq.calibration.finite_rows`
   (a NaN/Inf raises :class:`~floatlab.ptq.calibration.CalibrationError` naming the block, or with
   ``nonfinite_tokens="exclude"`` the sequences that hold one are left out, with a warning);
2. its full-precision outputs are computed as targets: ``fp_out = block(fp_in)`` and, for methods
   that also fit the quantized input (PTQ1.61), ``fpq_out = block(q_in)``; the input of every
   linear is recorded on the way (per-channel max ``|x|``, for salient-channel masks);
3. each quantized linear is replaced by one that computes with the method's differentiable
   weight (:class:`Learner`); the method's parameters are optimized with AdamW for ``epochs``
   passes over the sequences (seeded order; ``sequences`` per step), the loss on the block's
   outputs over real tokens; no other parameter of the model gets a gradient;
4. the learned parameters are frozen into stored codes (:meth:`Learner.freeze`), and the block
   computes with those exact weights to produce ``q_in`` of the next block.

Mixed precision (``ReconOptions.amp="bf16"``, off by default): only step 3's training forward
and backward run under ``torch.autocast(dtype=torch.bfloat16)``; the learners' weights are built
in float32 outside it (:class:`_ReconLinear`), the loss is taken in float32, and steps 1, 2 and 4
(the targets, the starting and final losses, the frozen block's outputs) stay float32.

Peak memory: the model once (never a copy), the block's learners, and the calibration
activations (four ``(sequences, tokens, hidden)`` float32 streams). Progress goes through
:mod:`floatlab.progress` (one step per epoch with its loss, one per block with its start and end
loss), and ``report["blocks"]`` receives per block: the loss before training (the method's
starting point, e.g. round-to-nearest), after each epoch, and of the frozen weights.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from floatlab import progress as _progress
from floatlab.ptq.calibration import CalibrationError, finite_rows, token_rows
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.modules import QuantLinear, set_module
from floatlab.ptq.quantizer import QuantSpec, fake_quant
from floatlab.ptq.weights import QWeight

_BLOCK = re.compile(r"^((?:.*?\.)?(?:layers|layer|h|blocks)\.\d+)\.")


class Learner(Protocol):
    """One linear layer's learnable quantizer."""

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups (``{"params": [...], "lr": ...}``)."""

    def weight(self) -> torch.Tensor:
        """The differentiable fake-quantized weight ``(out, in)``, float32."""

    def freeze(self) -> QWeight:
        """The stored result (its ``dequantize()`` is the weight the model computes with)."""


class Method(Protocol):
    """A reconstruction method: how it builds learners and scores a block's output."""

    name: str
    uses_quantized_target: bool

    def can_learn(self, spec: QuantSpec) -> bool:
        """Whether the method learns parameters of this weight format."""

    def learner(self, name: str, linear: nn.Linear, spec: QuantSpec, stats: dict, generator: torch.Generator,
                config: PTQConfig) -> Learner:
        ...

    def loss(self, out: torch.Tensor, fp_out: torch.Tensor, fpq_out: torch.Tensor | None,
             mask: torch.Tensor) -> torch.Tensor:
        ...


class FixedLearner:
    """A layer whose format the method does not learn (e.g. an override that keeps a layer in
    int8): rounded to nearest once, no parameters."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec, stats: dict, generator: torch.Generator):
        from floatlab.ptq.weights import rtn_weight
        self.qw = rtn_weight(linear.weight, spec, stats, generator)
        self.w = self.qw.dequantize()

    def param_groups(self) -> list[dict]:
        return []

    def weight(self) -> torch.Tensor:
        return self.w

    def freeze(self) -> QWeight:
        return self.qw


@dataclass
class _Seq:
    """One calibration sequence at the current block: its input and the block's call arguments."""

    args: tuple
    kwargs: dict
    mask: torch.Tensor          # (T,) bool: real tokens


def find_blocks(model: nn.Module, names) -> list[tuple[str, list[str]]]:
    """``[(block name, [its linear layers])]`` in model order. A block is the ``N``-th entry of a
    module list called ``layers``, ``layer``, ``h`` or ``blocks`` (``model.layers.3``,
    ``encoder.layer.0``). Raises ``ValueError`` for a layer outside any block."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        m = _BLOCK.match(n)
        if not m:
            raise ValueError(f"layer {n!r} is not inside a transformer block (model.layers.N / encoder.layer.N): "
                             "block-wise reconstruction cannot place it")
        blocks.setdefault(m.group(1), []).append(n)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(blocks.items(), key=lambda kv: order[kv[0]])


class _Stop(Exception):
    pass


def _split(batch: dict) -> list[dict]:
    """A calibration batch as single-sequence batches (tensors whose first dimension is the
    batch size are sliced)."""
    ids = batch.get("input_ids")
    first = ids if ids is not None else next(v for v in batch.values() if isinstance(v, torch.Tensor))
    n = first.shape[0] if first.dim() > 1 else 1
    if n == 1:
        return [batch]
    return [{k: (v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
             for k, v in batch.items()} for i in range(n)]


@torch.no_grad()
def capture_inputs(model: nn.Module, block: nn.Module, calib: list[dict]) -> list[_Seq]:
    """The first block's inputs (``args``, ``kwargs``) on every calibration sequence; the model
    stops at the block (nothing after it runs)."""
    seqs: list[_Seq] = []
    current = {}

    def hook(mod, args, kwargs):
        seqs.append(_Seq(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs),
                         current["mask"]))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calib:
            for seq in _split(batch):
                ids = seq.get("input_ids")
                am = seq.get("attention_mask")
                first = ids if ids is not None else next(v for v in seq.values() if isinstance(v, torch.Tensor))
                length = first.shape[1] if first.dim() > 1 else first.shape[0]
                current["mask"] = am.reshape(-1).bool() if am is not None else torch.ones(length, dtype=torch.bool)
                try:
                    model(**seq)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return seqs


def _hidden(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _run(block: nn.Module, x: torch.Tensor, seq: _Seq) -> torch.Tensor:
    return _hidden(block(x, *seq.args[1:], **seq.kwargs))


def _check_stream(block_name: str, xs: list[torch.Tensor], seqs: list[_Seq], what: str) -> list[int]:
    """Indices of the sequences whose real-token rows of ``xs`` are finite; a NaN/Inf raises
    (policy "error") naming the block, or drops the sequence (policy "exclude")."""
    keep = []
    for k, (x, s) in enumerate(zip(xs, seqs)):
        rows = token_rows(x, s.mask[None])
        kept = finite_rows(block_name, rows, where=f"{what}, calibration sequence {k}", dtype=x.dtype)
        if kept.shape[0] == rows.shape[0]:
            keep.append(k)
    return keep


class _ReconLinear(nn.Module):
    """A linear layer computing with a learner's differentiable weight."""

    def __init__(self, linear: nn.Linear, learner: Learner, a_spec: QuantSpec | None, transform: nn.Module | None):
        super().__init__()
        self.learner, self.a_spec, self.transform = learner, a_spec, transform
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.fixed: torch.Tensor | None = None      # the weight, computed once while no parameter moves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the fake-quantized weight (and an activation quantizer's rounding) in float32 even
        # inside the training step's autocast; only the matmul below takes bfloat16 operands
        with torch.autocast(x.device.type, enabled=False):
            if (self.transform is not None or self.a_spec is not None) and x.dtype in (torch.bfloat16, torch.float16):
                x = x.to(torch.float32)                      # exact
            if self.transform is not None:
                x = self.transform(x)
            if self.a_spec is not None:
                x = fake_quant(x, self.a_spec, "act")
            w = self.learner.weight() if self.fixed is None else self.fixed
        return F.linear(x, w, self.bias)


@contextlib.contextmanager
def _weights_fixed(block: nn.Module):
    """Within the block, each learning linear computes its fake-quantized weight once (the same
    tensor ``learner.weight()`` gives, detached) instead of once per calibration sequence: for
    the no-grad passes that score the starting point."""
    mods = [m for m in block.modules() if isinstance(m, _ReconLinear)]
    try:
        with torch.no_grad():
            for m in mods:
                m.fixed = m.learner.weight().detach()
        yield
    finally:
        for m in mods:
            m.fixed = None


def cpu_has_native_bf16() -> bool | None:
    """Whether this x86 CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), as torch's CPU
    kernels see it; None where torch does not say (another architecture or torch version)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return None


def _warn_if_bf16_is_emulated(opts, device: torch.device) -> None:
    if opts.amp == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        warnings.warn("ReconOptions.amp='bf16' on a CPU without AVX512-BF16 or AMX: torch emulates the bfloat16 "
                      "matmuls here, far slower than float32 (14x per training step on an AMD EPYC Zen 3); "
                      "use amp='off' (CLI: --amp off) on this machine", RuntimeWarning, stacklevel=4)


def _train_context(opts, x: torch.Tensor):
    """The autocast of a training step (``ReconOptions.amp``), or a no-op context."""
    if opts.amp == "bf16":
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _masked_mean(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` (``(1, T, ...)``) over the real tokens ``mask`` (``(T,)``). Where every token
    is real, the mean of ``t[0]`` itself (the same values in the same layout: the same result,
    without copying the rows and scattering their gradient back)."""
    return (t[0] if bool(mask.all()) else t[0][mask]).mean()


def mse_loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens (and every channel)."""
    return _masked_mean((out - target).square(), mask)


def cosine(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the tokens' hidden vectors over the real tokens."""
    return _masked_mean(F.cosine_similarity(out, target, dim=-1), mask)


@torch.no_grad()
def _block_loss(block, method, seqs, q_in, fp_out, fpq_out, keep, outs=None) -> tuple[float, float]:
    """(method loss, output MSE against the fp targets), means over the kept sequences; ``outs``:
    the block's outputs on ``q_in`` when already computed (the frozen block's, which also feed
    the next block: computed once)."""
    tot, mse = 0.0, 0.0
    for k in keep:
        out = _run(block, q_in[k], seqs[k]) if outs is None else outs[k]
        tot += float(method.loss(out, fp_out[k], fpq_out[k] if fpq_out else None, seqs[k].mask))
        mse += float(mse_loss(out, fp_out[k], seqs[k].mask))
    return tot / len(keep), mse / len(keep)


def reconstruct_model(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], config: PTQConfig,
                      transforms: dict[str, nn.Module] | None = None, *, report: dict | None = None,
                      generator: torch.Generator | None = None, method: Method | None = None,
                      done: Callable[[str, QWeight], None] | None = None) -> dict[str, QWeight]:
    """Quantize ``layers`` block by block with the method of ``config`` (``lwc`` or ``ptq161``,
    or ``method`` given directly) and return their :class:`QWeight` by name. The model's own
    modules are left as they were (``quantize_model`` then swaps in the stored weights).

    ``done``: called as ``done(name, qweight)`` for each layer of a block as soon as that block
    is finished (nothing reads its fp32 layers after that: the next blocks' inputs are already
    computed), so the caller can swap the layer and free its fp32 weight then; the returned dict
    is then empty. Without it, every block's results are held until the end (the fp32 model and
    all dequantized weights at once: +0.9 GB over SmolLM2's 30 blocks).

    ``transforms``: the pending online input transforms of the linears (rotation, smoothing
    scales), applied by the learning linears as the model's pre-hooks apply them. ``report``:
    filled with ``{"method", "blocks": [...]}`` (see the module docstring). Raises
    :class:`~floatlab.ptq.calibration.CalibrationError` for non-finite activations (naming the
    block) or calibration data without a usable sequence, ``ValueError`` for a layer outside
    the transformer blocks or a format the method cannot learn."""
    if method is None:
        method = method_for(config)
    opts = config.recon
    transforms = transforms or {}
    generator = generator or torch.Generator().manual_seed(opts.seed)
    quant = {n for n in layers if config.weight_spec(n) is not None}
    learnable = [n for n in quant if method.can_learn(config.weight_spec(n))]
    if quant and not learnable:
        spec = config.weight_spec(sorted(quant)[0])
        method.learner(sorted(quant)[0], layers[sorted(quant)[0]], spec, {}, generator, config)   # its error
        raise ValueError(f"method {method.name!r} learns none of the formats of this config ({spec.format!r}, ...)")
    blocks = find_blocks(model, layers)
    last = max((i for i, (_, names) in enumerate(blocks) if quant & set(names)), default=None)
    if last is None:
        return {}
    blocks = [(b, [n for n in names if n in quant]) for b, names in blocks[:last + 1]]
    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    if use_cache is not None:
        cfg.use_cache = False
    report = report if report is not None else {}
    report.update({"method": method.name, "epochs": opts.epochs, "blocks": [],
                   "rounded_to_nearest": sorted(quant - set(learnable))})
    qweights: dict[str, QWeight] = {}
    try:
        first = model.get_submodule(blocks[0][0])
        seqs = capture_inputs(model, first, list(calib))
        if not seqs or not any(bool(s.mask.any()) for s in seqs):
            raise CalibrationError(f"method {method.name!r}: the calibration set has no real tokens ({len(seqs)} "
                                   "sequences): pass non-empty calibration texts (CLI: --calib N with N > 0)")
        fp_in = [s.args[0] for s in seqs]
        q_in = fp_in
        _warn_if_bf16_is_emulated(opts, fp_in[0].device)
        with _progress.task(method.name, len(blocks), "blocks") as outer:
            for b, (bname, names) in enumerate(blocks):
                fp_in, q_in = _one_block(model, bname, names, b, seqs, fp_in, q_in, config, method, transforms,
                                         generator, qweights, report, outer)
                if done is not None:
                    for n in names:
                        done(n, qweights.pop(n))
    finally:
        if use_cache is not None:
            cfg.use_cache = use_cache
    return qweights


def _one_block(model, bname, names, b, seqs, fp_in, q_in, config, method, transforms, generator, qweights,
               report, outer):
    opts = config.recon
    t0 = time.time()
    block = model.get_submodule(bname)
    keep = _check_stream(bname, fp_in, seqs, "full-precision input")
    if q_in is not fp_in:
        keep = sorted(set(keep) & set(_check_stream(bname, q_in, seqs, "input from the quantized blocks before")))
    if len(keep) < len(seqs):
        if not keep:
            raise CalibrationError(f"block {bname!r}: every calibration sequence holds non-finite activations; "
                                   "nothing is left to reconstruct on")
        warnings.warn(f"{method.name}: {len(seqs) - len(keep)} of {len(seqs)} calibration sequences hold non-finite "
                      f"activations at block {bname!r} and are left out of its reconstruction "
                      "(nonfinite_tokens='exclude')", RuntimeWarning, stacklevel=3)
    linears = {n: model.get_submodule(n) for n in names}

    # fp targets and the inputs' channel maxima, with the model's own (fp) linears
    act_max: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, args):
            x = args[0]
            rows = token_rows(x, cur["mask"][None])
            rows = finite_rows(name, rows, where=lambda: f"calibration sequence {cur['k']}", dtype=x.dtype)
            if rows.shape[0]:
                m = rows.abs().amax(0)
                act_max[name] = m if name not in act_max else torch.maximum(act_max[name], m)
        return fn

    cur = {}
    fp_out = [None] * len(seqs)
    fpq_out = [None] * len(seqs) if method.uses_quantized_target else None
    handles = [lin.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
    try:
        with torch.no_grad():
            for k in range(len(seqs)):
                cur.update(k=k, mask=seqs[k].mask)
                fp_out[k] = _run(block, fp_in[k], seqs[k])
    finally:
        for h in handles:
            h.remove()
    if not linears:                   # nothing quantized here: both streams pass through
        with torch.no_grad():
            q_next = fp_out if q_in is fp_in else [_run(block, q_in[k], seqs[k]) for k in range(len(seqs))]
        outer.advance(1, f"{bname}: not quantized")
        return fp_out, q_next
    if fpq_out is not None:
        with torch.no_grad():
            for k in keep:
                fpq_out[k] = fp_out[k] if q_in is fp_in else _run(block, q_in[k], seqs[k])

    # learners in place of the linears
    learners = {}
    for n, lin in linears.items():
        spec = config.weight_spec(n)
        stats = {"act_max": act_max[n]} if n in act_max else {}
        learners[n] = (method.learner(n, lin, spec, stats, generator, config) if method.can_learn(spec)
                       else FixedLearner(lin, spec, stats, generator))
    frozen_grads = {p: p.requires_grad for p in block.parameters()}
    for p in frozen_grads:
        p.requires_grad_(False)
    rel = {n: n[len(bname) + 1:] for n in names}
    try:
        for n, lin in linears.items():
            set_module(block, rel[n], _ReconLinear(lin, learners[n], config.act_spec(n), transforms.get(n)))
        with _weights_fixed(block):
            loss0, mse0 = _block_loss(block, method, seqs, q_in, fp_out, fpq_out, keep)
        groups = [g for lr in learners.values() for g in lr.param_groups()]
        epochs = []
        if opts.epochs and groups:
            # foreach: one multi-tensor update for all parameters (the same values as the
            # per-parameter loop, which is torch's default on CPU)
            opt = torch.optim.AdamW(groups, weight_decay=opts.weight_decay, foreach=True)
            order_gen = torch.Generator().manual_seed(opts.seed * 1_000_003 + b)
            with _progress.task(f"{method.name} {bname}", opts.epochs, "epochs") as inner:
                for e in range(opts.epochs):
                    order = [keep[i] for i in torch.randperm(len(keep), generator=order_gen).tolist()]
                    total = 0.0
                    for start in range(0, len(order), opts.sequences):
                        chunk = order[start:start + opts.sequences]
                        opt.zero_grad(set_to_none=True)
                        for k in chunk:
                            with _train_context(opts, q_in[k]):
                                out = _run(block, q_in[k], seqs[k])
                            out = out.to(torch.float32)
                            loss = method.loss(out, fp_out[k], fpq_out[k] if fpq_out else None, seqs[k].mask)
                            if not torch.isfinite(loss):
                                raise CalibrationError(f"block {bname!r}: the {method.name} loss became non-finite in "
                                                       f"epoch {e + 1}; lower the learning rate (ReconOptions.lr)")
                            (loss / len(chunk)).backward()
                            total += float(loss.detach())
                        opt.step()
                    epochs.append(total / len(order))
                    inner.advance(1, f"loss {epochs[-1]:.4g}")
        for n in names:
            qweights[n] = learners[n].freeze()
        # the block with its stored weights gives the next block's quantized inputs
        for n, lin in linears.items():
            set_module(block, rel[n], QuantLinear(lin, qweights[n].dequantize(), config.weight_spec(n),
                                                  config.act_spec(n), transforms.get(n)))
        with torch.no_grad():
            q_next = [_run(block, q_in[k], seqs[k]) for k in range(len(seqs))]
        loss1, mse1 = _block_loss(block, method, seqs, q_in, fp_out, fpq_out, keep, outs=q_next)
    finally:
        for n, lin in linears.items():
            set_module(block, rel[n], lin)
        for p, g in frozen_grads.items():
            p.requires_grad_(g)
    report["blocks"].append({"block": bname, "loss_start": loss0, "loss_end": loss1, "mse_start": mse0,
                             "mse_end": mse1, "epoch_losses": epochs, "sequences": len(keep),
                             "seconds": time.time() - t0})
    outer.advance(1, f"{bname}: loss {loss0:.4g} -> {loss1:.4g}")
    return fp_out, q_next


def method_for(config: PTQConfig) -> Method:
    """The reconstruction method of ``config``'s rounder (``lwc`` or ``ptq161``)."""
    _, rounder = config.steps()
    if rounder == "lwc":
        from floatlab.ptq.lwc import LWC
        return LWC()
    if rounder == "ptq161":
        from floatlab.ptq.ptq161 import PTQ161
        return PTQ161()
    raise ValueError(f"method {config.method!r} does not learn by block-wise reconstruction (lwc, ptq161 do)")
