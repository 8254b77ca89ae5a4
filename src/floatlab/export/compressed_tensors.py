"""Export a floatlab-quantized model as a ``compressed-tensors`` checkpoint (what llm-compressor
writes and vLLM serves), written and described by the ``compressed-tensors`` package itself.

How a layer's floatlab specs map onto ``compressed-tensors``' ``QuantizationArgs``:

==========================  ===============================================================
floatlab weight spec        compressed-tensors weights (codes and scales are floatlab's)
==========================  ===============================================================
``int2`` ... ``int8``       int, symmetric, ``channel`` (one scale per row) or ``group``
                            (``group_size`` columns); pack-quantized / int-quantized
``e4m3``                    float 8 (E4M3), ``channel`` or ``group``; float-quantized
``nvfp4`` (``_46``, ``_2d``) NVFP4: E2M1, E4M3 scales per 16 columns (``tensor_group``), a
                            float32 global scale = 1 / floatlab's tensor scale (2-D tiles:
                            each tile's scale repeated on its 16 rows)
``mxfp4``, ``mxfp6_e2m3``,  MX: E2M1 / E2M3 / E4M3 elements, E8M0 scales per 32 columns
``mxfp8_e4m3``
==========================  ===============================================================

Activations (``W+A``): ``int{b}`` and ``e4m3`` become dynamic per-token quantization, ``mxfp4``,
``mxfp8_e4m3`` dynamic MX groups: the serving engine computes these scales itself (they follow
its own conventions). Everything else is refused with an :class:`ExportError` that says why
and names an exportable scheme nearby: HiFloat8/HiFloat4, E5M2, MXINT8, other block recipes,
weight codecs, bf16/fp16 (no quantization needed), NVFP4 *activations* (``compressed-tensors``
needs a calibrated static global scale; floatlab's is per tensor), a width that is not a
multiple of the group (floatlab pads; the checkpoint cannot), online input transforms
(rotation, SmoothQuant/AWQ scales), GPT-2's ``Conv1D`` and split mixture-of-experts layers
(their ``transformers`` classes hold no per-expert ``nn.Linear``).

The model is the fp32 source model with every quantized linear holding floatlab's dequantized
weight and scales; ``compressed-tensors`` computes the codes and packs them. Every layer is then
decompressed again with ``compressed-tensors``' own decompressor and checked: int, E4M3 and MX
weights equal floatlab's dequantized weights bit for bit; NVFP4 equals floatlab's codes and
scales under ``compressed-tensors``' NVFP4 arithmetic, which divides by the global scale and
rounds the decompressed weight to bfloat16 (so a loaded NVFP4 export's weights are floatlab's
rounded to bfloat16: measured relative difference <= 2^-8).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["ExportError", "check_exportable", "export_model", "export_folder", "scheme_args"]


class ExportError(ValueError):
    """A quantized model (or a layer of it) that a compressed-tensors checkpoint cannot hold,
    or an output folder that cannot be written; the message says why and what to do."""


_NEARBY = {
    "hif8": "e4m3 (FP8, per channel)", "e5m2": "e4m3 (compressed-tensors' FP8 is E4M3)",
    "hif4": "nvfp4", "mxint8": "int8 (per channel) or mxfp8_e4m3", "mxfp6_e3m2": "mxfp6_e2m3",
    "mxfp8_e5m2": "mxfp8_e4m3", "e2m1": "nvfp4 or mxfp4", "e3m2": "mxfp6_e2m3", "e2m3": "mxfp6_e2m3",
}


def _nearby(fmt) -> str:
    name = fmt.name
    if name in _NEARBY:
        return _NEARBY[name]
    if fmt.kind == "block":
        el = fmt.element.name
        return {"e2m1": "nvfp4 or mxfp4", "e2m3": "mxfp6_e2m3", "e4m3": "mxfp8_e4m3"}.get(el, "nvfp4 or mxfp8_e4m3")
    bits = getattr(fmt, "bits", 8)
    return "int4 or nvfp4" if bits <= 4 else "e4m3 or int8"


def _int_bits(fmt) -> int | None:
    """``b`` for floatlab's symmetric integer formats ``int2`` ... ``int8``."""
    name = fmt.name
    if name.startswith("int") and name[3:].isdigit() and 2 <= int(name[3:]) <= 8 and fmt.kind == "scalar":
        return int(name[3:])
    return None


def _block_kind(fmt) -> str | None:
    """``"nvfp4"``, ``"mxfp4"``, ``"mxfp6"``, ``"mxfp8"`` for block formats compressed-tensors stores."""
    el, sc, blk = fmt.element.name, fmt.scale.name, tuple(fmt.block)
    if el == "e2m1" and sc == "e4m3" and getattr(fmt, "tensor_scale", False) and blk in ((16,), (16, 16)):
        return "nvfp4"
    if sc == "e8m0" and blk == (32,) and not getattr(fmt, "tensor_scale", False):
        return {"e2m1": "mxfp4", "e2m3": "mxfp6", "e4m3": "mxfp8"}.get(el)
    return None


def scheme_args(w_spec, a_spec, in_features: int, layer: str = "") -> tuple[dict, dict | None]:
    """``(weights, input_activations)`` keyword dicts of ``QuantizationArgs`` for one layer's
    floatlab specs. Raises :class:`ExportError` (naming ``layer``, the reason and an exportable
    scheme nearby) for what a compressed-tensors checkpoint cannot hold."""
    where = f"layer {layer!r}: " if layer else ""
    if w_spec is None:
        raise ExportError(f"{where}activations are quantized but the weight is not; compressed-tensors quantizes "
                          "weights (with or without activations): quantize the weight too")
    if getattr(w_spec, "is_codec", False):
        raise ExportError(f"{where}the weight codec {w_spec.format!r} is a floatlab recipe compressed-tensors cannot "
                          "express; nearby exportable schemes: int4 with groups (--group-size 128), nvfp4, mxfp4")
    fmt = w_spec.fmt
    if fmt.kind == "block":
        kind = _block_kind(fmt)
        if kind is None:
            raise ExportError(f"{where}{fmt.name!r} ({fmt.element.name} elements, {fmt.scale.name} scales, blocks "
                              f"{'x'.join(map(str, fmt.block))}) has no compressed-tensors scheme; nearby "
                              f"exportable: {_nearby(fmt)}")
        group = 16 if kind == "nvfp4" else 32
        if in_features % group:
            raise ExportError(f"{where}in_features {in_features} is not a multiple of the {fmt.name} block ({group}): "
                              "floatlab padded it, a compressed-tensors checkpoint cannot; keep this layer in another "
                              "format (--override) or use a per-channel scheme (int8, e4m3)")
        weights = {"num_bits": {"nvfp4": 4, "mxfp4": 4, "mxfp6": 6, "mxfp8": 8}[kind], "type": "float",
                   "symmetric": True, "dynamic": False, "group_size": group,
                   "strategy": "tensor_group" if kind == "nvfp4" else "group",
                   "scale_dtype": torch.float8_e4m3fn if kind == "nvfp4" else torch.uint8,
                   "zp_dtype": torch.float8_e4m3fn if kind == "nvfp4" else torch.uint8}
    else:
        bits = _int_bits(fmt)
        if fmt.name in ("bf16", "fp16", "fp32"):
            raise ExportError(f"{where}{fmt.name} weights need no compressed-tensors checkpoint: save the model in "
                              f"{fmt.name} with transformers (model.to(torch.{'bfloat16' if fmt.name == 'bf16' else 'float16'})"
                              ".save_pretrained(dir)); quantized schemes nearby: e4m3, int8")
        if bits is None and fmt.name != "e4m3":
            raise ExportError(f"{where}{fmt.name!r} has no compressed-tensors scheme (its scalar types are int2-int8 "
                              f"and FP8 E4M3); nearby exportable: {_nearby(fmt)}")
        g = w_spec.group_size
        if g and in_features % g:
            raise ExportError(f"{where}in_features {in_features} is not a multiple of group_size {g}; compressed-"
                              "tensors' groups must divide the width")
        weights = {"num_bits": bits or 8, "type": "int" if bits else "float", "symmetric": True, "dynamic": False,
                   "strategy": "group" if g else "channel", "group_size": g}
    return weights, _act_args(a_spec, where)


def _act_args(a_spec, where: str) -> dict | None:
    if a_spec is None:
        return None
    if getattr(a_spec, "is_codec", False) or a_spec.group_size:
        raise ExportError(f"{where}activations {a_spec}: compressed-tensors' activation schemes are per token (int, "
                          "e4m3) or MX groups; nearby: int8 or e4m3 activations")
    fmt = a_spec.fmt
    if fmt.kind == "block":
        kind = _block_kind(fmt)
        if kind == "nvfp4":
            raise ExportError(f"{where}NVFP4 activations: compressed-tensors' NVFP4 activations need a calibrated "
                              "static global scale, floatlab computes it per tensor; export weight-only nvfp4 "
                              "(W4A16) or use e4m3 / mxfp4 activations")
        if kind not in ("mxfp4", "mxfp8"):
            raise ExportError(f"{where}activations {fmt.name!r} have no compressed-tensors scheme; nearby: "
                              f"{_nearby(fmt)}")
        return {"num_bits": 4 if kind == "mxfp4" else 8, "type": "float", "symmetric": True, "dynamic": True,
                "strategy": "group", "group_size": 32, "scale_dtype": torch.uint8, "zp_dtype": torch.uint8}
    bits = _int_bits(fmt)
    if bits is None and fmt.name != "e4m3":
        raise ExportError(f"{where}activations {fmt.name!r} have no compressed-tensors scheme; nearby: "
                          f"{_nearby(fmt) if fmt.name not in ('bf16', 'fp16') else 'weight-only (no activation format)'}")
    return {"num_bits": bits or 8, "type": "int" if bits else "float", "symmetric": True, "dynamic": True,
            "strategy": "token"}


def check_exportable(config, layer_widths: dict[str, int], transforms=(), converted=None) -> dict:
    """``{layer: (weights, input_activations)}`` for every quantized layer (see
    :func:`scheme_args`), checked before any work. ``layer_widths``: ``{layer: in_features}``;
    ``transforms``: layers with an online input transform; ``converted``: what
    :func:`floatlab.models.linearize` changed in the model. Raises :class:`ExportError`."""
    if converted:
        kinds = sorted(set(converted.values()))
        raise ExportError(f"this model's {', '.join(kinds)} layers are not nn.Linear in transformers (floatlab split "
                          "them into linears to quantize them): a compressed-tensors checkpoint loaded by transformers "
                          "cannot hold them; export works for models whose GEMMs are nn.Linear (Llama, Qwen2, "
                          "Mistral, Gemma, OPT, BERT, ...)")
    if transforms:
        first = sorted(transforms)[0]
        raise ExportError(f"layer {first!r} (and {len(transforms) - 1} more) has an online input transform (rotation's "
                          "Hadamard or SmoothQuant/AWQ scales) that a compressed-tensors checkpoint cannot hold; "
                          "export a model quantized with rtn or gptq")
    plan = {}
    for name, width in layer_widths.items():
        w, a = config.weight_spec(name), config.act_spec(name)
        if w is None and a is None:
            continue
        plan[name] = scheme_args(w, a, width, name)
    if not plan:
        raise ExportError("no layer is quantized: there is nothing to export as compressed-tensors")
    return plan


# ---- writing ---------------------------------------------------------------------------------------
def _scales(qw, kind: str, rows: int, cols: int) -> dict[str, torch.Tensor]:
    """floatlab's scales of one QWeight in compressed-tensors' layout (float32 values)."""
    spec = qw.spec
    if not spec.is_block:
        return {"weight_scale": qw.row_scale.to(torch.float32).reshape(rows, -1)}
    fmt = spec.fmt
    codes = qw.scales["scale"].to(torch.int64)
    s = fmt.scale.decode(codes).to(torch.float32)
    if len(fmt.block) == 2:                        # 16x16 tiles: each tile's scale on each of its rows
        br, bc = fmt.block
        s = s.reshape(-(-rows // br), -(-cols // bc)).repeat_interleave(br, dim=0)[:rows]
    out = {"weight_scale": s.reshape(rows, -1)}
    if kind == "nvfp4":
        s_dec = qw.scales["tensor_scale"].to(torch.float64).reshape(1)
        out["weight_global_scale"] = (1.0 / s_dec).to(torch.float32)
    return out


@contextlib.contextmanager
def _quiet():
    """No tqdm bars from compressed-tensors' loops (they would flood logs)."""
    from compressed_tensors.compressors.model_compressors import model_compressor

    old = model_compressor.tqdm
    model_compressor.tqdm = lambda items, *a, **k: items
    try:
        yield
    finally:
        model_compressor.tqdm = old


def _quantization_config(plan: dict, all_linears: list[str]):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    groups: dict[str, list] = {}
    for name, (w, a) in plan.items():
        key = json.dumps([w, a], default=str, sort_keys=True)
        groups.setdefault(key, [w, a, []])[2].append(name)
    ignore = [n for n in all_linears if n not in plan]
    config_groups = {}
    for i, (w, a, names) in enumerate(groups.values()):
        targets = ["Linear"] if len(groups) == 1 else names
        config_groups[f"group_{i}"] = QuantizationScheme(
            targets=targets, weights=QuantizationArgs(**w),
            input_activations=QuantizationArgs(**a) if a is not None else None)
    return QuantizationConfig(config_groups=config_groups, ignore=ignore, quantization_status="frozen")


def _verify(name: str, module: nn.Module, qw, kind: str | None) -> None:
    """Decompress the compressed module's state with compressed-tensors and compare it with
    floatlab's dequantized weight (see the module docstring)."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.utils import get_direct_state_dict

    scheme = module.quantization_scheme
    comp = BaseCompressor.get_value_from_registry(scheme.format.value if hasattr(scheme.format, "value")
                                                  else scheme.format)
    state = {k: v.clone() for k, v in get_direct_state_dict(module).items() if v is not None}
    got = comp.decompress(state, scheme)["weight"]
    want = qw.dequantize().to(torch.float32)
    if kind == "nvfp4":                # compressed-tensors' arithmetic: bf16(e2m1 * f32(scale / global))
        import floatlab

        s = _scales(qw, kind, *want.shape)
        cols = want.shape[1]
        sb = s["weight_scale"].repeat_interleave(16, dim=1)[:, :cols].to(torch.float64)
        s_dec = qw.scales["tensor_scale"].to(torch.float64)
        ratio = torch.where(sb > 0, want.to(torch.float64) / (sb * s_dec), torch.zeros_like(sb))
        el = floatlab.quantize(ratio, "e2m1").to(torch.float32)          # floatlab's element values
        eff = (s["weight_scale"].to(torch.bfloat16).to(torch.float32) / s["weight_global_scale"])
        want = (el * eff.repeat_interleave(16, dim=1)[:, :cols]).to(torch.bfloat16)
    if got.shape != want.shape or not torch.equal(got.to(want.dtype), want):
        diff = float((got.float() - want.float()).abs().max()) if got.shape == want.shape else float("nan")
        raise ExportError(f"layer {name!r}: compressed-tensors decompresses this layer to other weights than "
                          f"floatlab's (max |diff| {diff:.3g}); this is a floatlab bug, please report it")


def _as_linear(model: nn.Module) -> None:
    """Replace every QuantLinear by an nn.Linear holding its (dequantized) weight and bias."""
    from floatlab.ptq.modules import QuantLinear, set_module

    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantLinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
            lin.weight = nn.Parameter(mod.weight.detach(), requires_grad=False)
            if mod.bias is not None:
                lin.bias = nn.Parameter(mod.bias.detach(), requires_grad=False)
            set_module(model, name, lin)


def check_out(out, overwrite: bool, source=None) -> Path:
    """Refuse an existing non-empty ``out`` (unless ``overwrite``), a file in the way, and an
    ``out`` that is the ``source`` ptq folder, lies inside it or holds it (with ``overwrite`` the
    export would replace the result it reads)."""
    out = Path(out).expanduser()
    if source is not None:
        a, b = out.resolve(), Path(source).expanduser().resolve()
        if a == b or b in a.parents or a in b.parents:
            what = ("the ptq result itself" if a == b else "inside the ptq result" if b in a.parents
                    else "a folder holding the ptq result")
            raise ExportError(f"{out} is {what} ({b}); write the checkpoint into another folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; give a folder for the checkpoint")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite (Python: overwrite=True) to replace it, "
                          "or choose another folder")
    return out


def export_model(lm, config, qweights: dict, out, *, overwrite: bool = False, provenance: dict | None = None,
                 log=print) -> Path:
    """Write ``lm.model`` (quantized by floatlab with ``config``; its quantized layers are
    ``QuantLinear`` modules or ``nn.Linear`` holding the dequantized weights) with the stored
    weights ``qweights`` as a compressed-tensors checkpoint in ``out``. The model is changed in
    place (its quantized layers become compressed ``nn.Linear`` modules).

    The checkpoint is written into a temporary folder beside ``out`` and renamed when complete:
    a failure leaves nothing half-written (and ``out`` as it was). Raises :class:`ExportError`
    for a scheme compressed-tensors cannot hold (before any work), an existing non-empty
    ``out`` without ``overwrite``, and a layer whose decompression would differ."""
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import apply_quantization_config
    except ImportError as err:
        raise ExportError("export needs the compressed-tensors package: pip install 'floatlab[export]'") from err
    from floatlab.models.loading import linear_layers
    from floatlab.ptq.modules import QuantLinear

    out = check_out(out, overwrite)
    model = lm.model
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    transforms = [n for n, m in quant.items() if m.input_transform is not None]
    widths = {n: m.in_features for n, m in quant.items()} or {n: m.in_features for n, m in linear_layers(model).items()}
    plan = check_exportable(config, widths, transforms, getattr(lm, "converted", None))
    missing = [n for n, (w, _) in plan.items() if n not in qweights]
    if missing:
        raise ExportError(f"layer {missing[0]!r} has no stored quantized weight")
    _as_linear(model)
    model.to("cpu")
    all_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qconfig = _quantization_config(plan, all_linears)
    with _quiet(), torch.no_grad():
        apply_quantization_config(model, qconfig, show_progress=False)
        mods = dict(model.named_modules())
        for name, (w, a) in plan.items():
            mod, qw = mods[name], qweights[name]
            rows, cols = mod.weight.shape
            mod.weight.data = qw.dequantize().to(torch.float32).reshape(rows, cols)
            kind = _block_kind(qw.spec.fmt) if qw.spec.is_block else None
            for key, value in _scales(qw, kind, rows, cols).items():
                param = getattr(mod, key)
                if tuple(param.shape) != tuple(value.shape):
                    raise ExportError(f"layer {name!r}: {key} has shape {tuple(value.shape)}, compressed-tensors "
                                      f"expects {tuple(param.shape)}; this is a floatlab bug, please report it")
                param.data = value.to(param.dtype)
        compressor = ModelCompressor.from_pretrained_model(model)
        compressor.compress_model(model)
        for name in plan:
            qw = qweights[name]
            _verify(name, mods[name], qw, _block_kind(qw.spec.fmt) if qw.spec.is_block else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet():
            model.save_pretrained(tmp)
            compressor.update_config(str(tmp))
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)
        from floatlab.atomic import umask, write_json
        from floatlab.provenance import environment

        write_json(tmp / "floatlab_export.json", {"format": "compressed-tensors", "ptq": config.to_dict(),
                                                 "layers": {n: {"weights": {k: str(v) for k, v in w.items()},
                                                                "input_activations": None if a is None else
                                                                {k: str(v) for k, v in a.items()}}
                                                            for n, (w, a) in plan.items()},
                                                 **(provenance or {}), "environment": environment()})
        mode = 0o666 & ~umask()
        for p in tmp.rglob("*"):
            if p.is_file():
                os.chmod(p, mode)
        os.chmod(tmp, 0o777 & ~umask())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_folder(folder, out, *, model=None, overwrite: bool = False, log=print) -> Path:
    """Export the ``floatlab ptq`` output ``folder`` as a compressed-tensors checkpoint in ``out``
    (``model``: where the source model is now, if it moved). Every layer is checked exportable
    before the model loads. Raises :class:`ExportError` (see :func:`export_model`),
    ``FileNotFoundError``/``ValueError`` for a folder that is not a ptq output."""
    import floatlab
    from floatlab.ptq.config import PTQConfig
    from floatlab.ptq.io import CONFIG, load_quantized, weight_files
    from floatlab.ptq.weights import QWeight

    folder = Path(folder)
    saved = json.loads((folder / CONFIG).read_text()) if (folder / CONFIG).is_file() else None
    if saved is None:
        raise FileNotFoundError(f"{folder} is not a floatlab ptq output folder (no {CONFIG})")
    check_out(out, overwrite, folder)
    config = PTQConfig.from_dict(saved["ptq"])
    if saved.get("input_transforms"):
        check_exportable(config, {}, list(saved["input_transforms"]))
    tensors = {}
    for f in weight_files(saved):
        tensors.update(floatlab.load(folder / f))
    shapes = {n: tuple(tensors[f"{n}.qweight"].shape) for n in saved["layers"]}
    check_exportable(config, {n: s[1] for n, s in shapes.items()})
    lm, config, saved = load_quantized(folder, log=log, model=model)
    qweights = {n: QWeight.from_tensors(config.weight_spec(n), n, tensors) for n in saved["layers"]}
    return export_model(lm, config, qweights, out, overwrite=overwrite, log=log,
                        provenance={"source": str(folder.resolve()), "model": saved["model"]})
