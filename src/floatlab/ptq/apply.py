"""Quantize a model in place: transforms (rotation, SmoothQuant, AWQ), then a rounder (RTN,
GPTQ, or a block-wise reconstruction: LWC, PTQ1.61) for every linear layer, each replaced by a
:class:`QuantLinear`."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from floatlab.models.loading import linear_layers
from floatlab.parallel import trim_allocator
from floatlab.progress import track
from floatlab.ptq.calibration import CalibrationError, all_finite, check_parameters, nonfinite_policy
from floatlab.codecs import CodecError
from floatlab.ptq.config import RECONSTRUCTING, PTQConfig
from floatlab.ptq.modules import QuantLinear, set_module
from floatlab.ptq.weights import QWeight, rtn_weight


def quantize_model(model: nn.Module, config: PTQConfig, *, calib: Iterable[dict] | None = None,
                   progress: Callable[[str], None] | None = None,
                   hessians: dict[str, torch.Tensor] | None = None,
                   report: dict | None = None, keep: bool = True,
                   released: Callable[[str, nn.Module], None] | None = None,
                   packed: bool = False,
                   read: Callable[[torch.Tensor], None] | None = None) -> dict[str, QWeight]:
    """Quantize ``model``'s linear layers (in place) and return their :class:`QWeight` by name.

    ``calib`` is a list of model input dicts (``input_ids``, ``attention_mask``), needed by GPTQ,
    SmoothQuant and AWQ. ``hessians``: GPTQ's input Hessians by layer name, precomputed with
    :func:`floatlab.ptq.gptq.collect_hessians` on this same (untransformed) model and ``calib``;
    ``floatlab compare`` computes them once for all its formats. ``report``: a dict that the
    block-wise reconstruction (``lwc``, ``ptq161``) fills with its per-block losses
    (``report["blocks"]``).

    Non-finite numbers never reach the result: a NaN/Inf parameter of ``model`` (before, or after
    a transform step) raises :class:`floatlab.ptq.calibration.CalibrationError` naming it; so
    does a NaN/Inf in a calibrated layer's input (naming the layer) unless
    ``config.nonfinite_tokens == "exclude"``, which leaves those tokens out of that layer's
    statistics; so do calibration batches without a real token, and a quantized weight that came
    out non-finite. Methods that do not calibrate (``rtn``, ``rotate``) never run ``calib``.

    Memory: RTN and GPTQ put each layer's :class:`QuantLinear` in place as soon as its weight is
    quantized, the reconstruction methods as soon as its block is done (the model's own
    reference to the fp32 layer goes then), and GPTQ drops each
    Hessian it collected itself once its layer is done. ``keep=False`` returns ``{}`` and keeps
    no :class:`QWeight` (only the dequantized weight the model computes with), for callers that
    do not save the result (``floatlab compare``). ``released(name, linear)``: called with each
    fp32 layer right after its :class:`QuantLinear` took its place (``floatlab compare`` frees
    that layer's weight then and reads it back from the checkpoint afterwards).

    ``packed=True`` (RTN and GPTQ, float32 CPU weights): each quantized layer keeps only its
    packed codes and scales (:class:`QuantLinear` ``packed=``) and decodes them in every forward
    pass, instead of a float32 copy of its weight (SmolLM2: 0.40 GiB of float32 weights become
    0.05-0.2 GiB of codes). Before a layer is packed, its decode is compared bit for bit with
    the dequantized weight the dense layer would hold; a layer where they differ (or whose
    weight is not contiguous float32 on the CPU) stays dense, so the model computes the same
    numbers either way. The returned :class:`QWeight` are then the records the layers hold
    (no dense copy). ``read(p)``: called with each parameter of ``model`` once the NaN/Inf check
    before quantizing has read it (``floatlab compare`` drops its checkpoint-mapped pages then:
    :meth:`floatlab.ptq.compare.CheckpointWeights.drop`)."""
    transforms, rounder = config.steps()
    calib = list(calib or [])
    check_parameters(model, each=read)
    transforms_done: dict[str, nn.Module] = {}
    pending = _PendingTransforms(model)   # keeps the model computing its fp32 function meanwhile
    with nonfinite_policy(config.nonfinite_tokens):     # for every calibration pass below
        try:
            for t in transforms:
                if t == "rotate":
                    from floatlab.ptq.rotation import rotate_model
                    transforms_done.update(rotate_model(model))
                else:
                    if not calib:
                        raise ValueError(f"method {t!r} needs calibration data (calib)")
                    from floatlab.ptq.smooth import smooth_model
                    for name, mod in smooth_model(model, calib, config, t).items():
                        prev = transforms_done.get(name)
                        transforms_done[name] = mod if prev is None else nn.Sequential(prev, mod)
                check_parameters(model, after=t)
                pending.attach(transforms_done)
            layers = linear_layers(model)
            check_blocks(layers, config)
            swapped: set[str] = set()

            def done(name: str, qw: QWeight | None) -> None:
                """Swap layer ``name`` for its QuantLinear now (RTN/GPTQ: nothing reads the fp32
                model after its layer is quantized; LWC/PTQ1.61: after its block)."""
                wq = _swap(model, name, layers[name], qw, config, transforms_done, pack)
                swapped.add(name)
                trim_allocator()
                if released is not None and wq is not None:
                    released(name, layers[name])
                layers[name] = None          # the fp32 layer can go, unless the caller holds it
                if keep and qw is not None:
                    if not (pack and getattr(model.get_submodule(name), "packed", None) is qw):
                        qw.compact(wq)       # codes instead of float32 grid values
                    qweights[name] = qw
            pack = packed and rounder in ("rtn", "gptq")
            generator = torch.Generator().manual_seed(config.recon.seed)      # random salient masks
            if rounder in RECONSTRUCTING:
                if not calib:
                    raise ValueError(f"method {rounder!r} learns by block-wise reconstruction: it needs calibration "
                                     "data (calib)")
                from floatlab.ptq.reconstruct import reconstruct_model
                qweights = {}
                reconstruct_model(model, layers, calib, config, transforms_done, report=report,
                                  generator=generator, done=done)
            else:
                stats = codec_statistics(model, layers, calib, config)
                if rounder == "gptq":
                    if not calib:
                        raise ValueError("GPTQ needs calibration data (calib)")
                    from floatlab.ptq.gptq import gptq_model
                    if hessians is not None and transforms:
                        raise ValueError("precomputed hessians describe the untransformed model; "
                                         f"method {config.method!r} transforms it first")
                    qweights = {}
                    gptq_model(model, layers, calib, config, progress=progress, hessians=hessians,
                               stats=stats, generator=generator, done=done)
                else:
                    qweights = {}
                    for name, lin in track(layers.items(), "rtn", unit="layers", note=lambda kv: kv[0]):
                        spec = config.weight_spec(name)
                        if spec is not None:
                            done(name, _named(name, rtn_weight, lin.weight, spec, stats.get(name), generator))
        finally:
            pending.attach({})
    for name, lin in layers.items():
        if name not in swapped:
            if _swap(model, name, lin, qweights.get(name), config, transforms_done) is not None and released:
                released(name, lin)
    return qweights if keep else {}


def _swap(model: nn.Module, name: str, lin: nn.Linear, qw: QWeight | None, config: PTQConfig,
          transforms_done: dict[str, nn.Module], packed: bool = False) -> torch.Tensor | None:
    """Replace layer ``name`` by its :class:`QuantLinear` (weight ``qw`` dequantized; without
    ``qw``: the layer's own weight) where it has a weight or activation format or a transform;
    returns the weight it computes with (``None``: not replaced). With ``packed``, the layer
    holds ``qw``'s packed record instead where :func:`packs_exactly` (see
    :func:`quantize_model`). Raises :class:`CalibrationError` when the quantized weight is not
    finite."""
    w_spec, a_spec = config.weight_spec(name), config.act_spec(name)
    if w_spec is None and a_spec is None and name not in transforms_done:
        return None
    wq = qw.dequantize() if qw is not None else lin.weight.detach()
    if not all_finite(wq):
        raise CalibrationError(f"layer {name!r}: its weight quantized to {w_spec} by {config.method!r} has "
                               f"{int((~torch.isfinite(wq)).sum())} non-finite values (max |w| before: "
                               f"{float(lin.weight.detach().abs().max()):.3g}); the weight is beyond the "
                               "range this format's scales reach, or this is a floatlab bug: please report it")
    if packed and qw is not None and lin.weight.dtype == torch.float32 and packs_exactly(qw, wq):
        qw.drop_dense()
        set_module(model, name, QuantLinear(lin, None, w_spec, a_spec, transforms_done.get(name), packed=qw))
        return wq
    set_module(model, name, QuantLinear(lin, wq, w_spec, a_spec, transforms_done.get(name)))
    return wq


def packs_exactly(qw: QWeight, wq: torch.Tensor) -> bool:
    """Whether ``qw``'s packed record decodes (:meth:`QWeight.decode`) to ``wq`` bit for bit
    (every float32 bit pattern, signs of zeros included) with the same layout: ``wq`` a
    contiguous float32 CPU tensor of ``qw.shape``. Builds ``qw``'s QTensor (kept)."""
    if wq.dtype != torch.float32 or wq.device.type != "cpu" or not wq.is_contiguous() \
            or tuple(wq.shape) != tuple(qw.shape):
        return False
    qw._qt = qw.to_qtensor()
    back = qw.decode()
    return back.dtype == torch.float32 and back.shape == wq.shape and back.is_contiguous() \
        and torch.equal(back.view(torch.int32), wq.view(torch.int32))


def codec_statistics(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict],
                     config: PTQConfig) -> dict[str, dict]:
    """The calibration statistics (``act_max``) of the layers whose weight codec needs them (a
    salient-channel mask chosen by activation max), through the shared calibration pass; ``{}``
    when none does. Raises ``ValueError`` when one does and ``calib`` is empty."""
    need = {n: l for n, l in layers.items() if (s := config.weight_spec(n)) is not None and s.is_codec
            and s.codec.needs_stats}
    if not need:
        return {}
    if not calib:
        spec = config.weight_spec(next(iter(need)))
        raise ValueError(f"format {spec.format!r} picks salient input channels by their calibration activation max: "
                         "it needs calibration data (calib; CLI: --calib N with N > 0)")
    from floatlab.ptq.stats import input_absmax
    return input_absmax(model, need, calib)


def _named(name: str, fn, *args):
    """``fn(*args)``, with a codec's error naming the layer."""
    try:
        return fn(*args)
    except CodecError as err:
        raise CodecError(f"layer {name!r}: {err}") from err


class _PendingTransforms:
    """Between a transform step and the final :class:`QuantLinear` swap, a transformed linear
    holds the inverse of its online input transform in its weight; a forward pre-hook applies
    the transform so that the model still computes its fp32 function. The calibration passes of
    later steps (SmoothQuant/AWQ statistics, GPTQ's Hessians, whose hooks run after this one)
    then see the inputs the transformed weights actually multiply."""

    def __init__(self, model: nn.Module):
        self.model, self.handles = model, []

    def attach(self, transforms: dict[str, nn.Module]) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        layers = linear_layers(self.model)
        for name, t in transforms.items():
            hook = (lambda mod, args, t=t: (t(args[0]), *args[1:]))
            self.handles.append(layers[name].register_forward_pre_hook(hook))


def check_blocks(layers: dict[str, nn.Linear], config: PTQConfig) -> None:
    """Refuse, before any work, a block format whose block does not divide a layer's input
    dimension when padding is off, a weight codec that cannot store a layer's weight (a group
    that does not divide it with padding off, ...), and a scalar format's ``group_size`` that
    does not divide a layer's input dimension."""
    for name, lin in layers.items():
        w_spec = config.weight_spec(name)
        if w_spec is not None and (w_spec.is_codec or w_spec.group_size):
            _named(name, w_spec.codec.check_shape, tuple(lin.weight.shape))
        a_spec = config.act_spec(name)
        if a_spec is not None and a_spec.is_codec:
            raise ValueError(f"layer {name}: {a_spec.format!r} is a weight codec; activations take floatlab formats")
        if a_spec is not None and a_spec.group_size:       # activations: groups along in_features too
            _named(name, a_spec.codec.check_shape, (1, lin.in_features))
        for role, spec in (("weight", w_spec), ("activation", a_spec)):
            if spec is None or not spec.is_block or spec.pad:
                continue
            b = spec.fmt.block[-1]
            if lin.in_features % b:
                raise ValueError(f"layer {name}: in_features {lin.in_features} is not a multiple of the "
                                 f"{spec.format} block ({b}) and padding is off ({role}); allow padding "
                                 "(zeros for the scale computation, dropped on output) or pick another format")


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@torch.no_grad()
def rebuild_quantized(model: nn.Module, config: PTQConfig, qweights: dict[str, QWeight],
                      transforms: dict[str, nn.Module] | None = None) -> None:
    """Put saved quantized weights into a freshly loaded (and identically transformed) model."""
    layers = linear_layers(model)
    for name, lin in layers.items():
        w_spec, a_spec = config.weight_spec(name), config.act_spec(name)
        tr = (transforms or {}).get(name)
        if w_spec is None and a_spec is None and tr is None:
            continue
        wq = qweights[name].dequantize() if name in qweights else lin.weight.detach()
        set_module(model, name, QuantLinear(lin, wq, w_spec, a_spec, tr))
