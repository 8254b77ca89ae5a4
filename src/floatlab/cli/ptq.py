"""``floatlab ptq``: quantize a model and save it as packed QTensors plus a config."""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import typer

from floatlab.cli.output import (CliError, check_int, check_out_dir, command_line, compile_note, confirm_overwrite,
                                 progress, say, show_table)
from floatlab.text import plural


def ptq_command(
    model: str = typer.Option("minilm", "--model", "-m", help="built-in model name or local HF model folder"),
    format: str = typer.Option("hif4", "--format", "-f", help="weight format"),
    act_format: str = typer.Option(None, "--act-format", help="activation format (default: weight-only)"),
    group_size: int = typer.Option(None, "--group-size", help="scalar weight formats (int4, int8, e4m3, ...): one scale per GROUP input columns instead of one per row"),
    method: str = typer.Option("rtn", "--method", help="rtn | gptq | awq | smoothquant | rotate, joined with '+'"),
    calib: int = typer.Option(32, "--calib", help="calibration texts / windows"),
    override: list[str] = typer.Option([], "--override", help="per-layer format: 'GLOB=WFORMAT[:AFORMAT]' ('fp32' keeps a role)"),
    pairs: int = typer.Option(64, "--pairs", help="encoders: retrieval pairs for the recorded metric (0 = all)"),
    windows: int = typer.Option(16, "--windows", help="causal LMs: perplexity windows"),
    window: int = typer.Option(256, "--window", help="causal LMs: tokens per window"),
    pad: bool = typer.Option(True, "--pad/--no-pad", help="block formats: pad a layer whose width is not a multiple of the block"),
    calib_data: Path = typer.Option(None, "--calib-data", help="your own calibration text: .txt, .jsonl, .parquet or a saved datasets folder (default: the built-in text)"),
    eval_data: Path = typer.Option(None, "--eval-data", help="your own text for the recorded metric, same kinds (default: the built-in text)"),
    text_field: str = typer.Option(None, "--text-field", help="the field holding the text in .jsonl/.parquet/datasets data (default: text)"),
    nonfinite_tokens: str = typer.Option("error", "--nonfinite-tokens", help="a NaN/Inf in a calibration token's input: error | exclude (leave the token out)"),
    amp: str = typer.Option("off", "--amp", help="lwc/ptq161: mixed precision of the reconstruction's training steps: off (float32) | bf16 (bfloat16 autocast; fast on CPUs with AMX/AVX512-BF16 and on GPUs; stored weights quantized exactly as with off)"),
    device: str = typer.Option("cpu", "--device", help="where the model runs: cpu, cuda, cuda:N"),
    blockwise: bool = typer.Option(False, "--blockwise", help="causal LMs larger than memory: read the checkpoint and quantize one transformer block at a time (rtn/gptq, with smoothquant/awq; the same result as without it)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
) -> None:
    """Quantize MODEL's linear layers and save them (QTensors in safetensors + config.json)."""
    from floatlab.cli import inputs
    from floatlab.cli.output import flag_errors
    from floatlab.ptq.config import PTQConfig, ReconOptions
    from floatlab.ptq.io import CONFIG, WEIGHTS

    t0 = time.time()
    # every input first: nothing is loaded or computed before they all pass
    w_spec = inputs.spec(format, "--format", pad, group_size)
    a_spec = inputs.spec(act_format, "--act-format", pad) if act_format else None
    overrides = tuple(_parse_override(o, pad) for o in override)
    steps = inputs.method_steps(method)
    inputs.check_calib(calib, steps, method)
    inputs.check_gptq_formats([w_spec] + [w for _, w, _ in overrides], steps, "--format/--override")
    inputs.check_pairs(pairs)
    inputs.check_text_field(text_field, calib_data, eval_data)
    check_int(windows, "--windows", 1)
    check_int(window, "--window", 2)
    policy = inputs.nonfinite(nonfinite_tokens)
    with flag_errors("--amp"):
        recon = ReconOptions(amp=amp)
    dev = inputs.device(device)
    if blockwise and dev.type != "cpu":
        raise CliError("--blockwise runs on the CPU (one block in memory at a time); drop --device or --blockwise",
                       "--device")
    out = Path(out).expanduser()
    if out.is_dir():
        earlier = [p for p in (CONFIG, WEIGHTS) if (out / p).exists()] + sorted(
            p.name for p in out.glob("quantized-*.safetensors"))
        if earlier:
            confirm_overwrite(f"{out} holds an earlier result ({', '.join(earlier)})", overwrite)
    out = check_out_dir(out)
    name, folder, kind, _, mcfg = inputs.resolve(model)
    if kind == "causal_lm":
        inputs.check_window(window, mcfg)
    cfg = PTQConfig(weight=w_spec, act=a_spec, method=method, overrides=overrides, nonfinite_tokens=policy,
                    recon=recon)
    calibrates = cfg.needs_calibration()        # a salient-channel mask by activation max calibrates under rtn too
    if blockwise:
        from floatlab.ptq.blockwise import BlockwiseError, check_blockwise
        try:
            check_blockwise(cfg, kind)
        except BlockwiseError as err:
            raise CliError(str(err), "--blockwise") from None
    if calibrates:
        check_int(calib, "--calib", 1, hint=f"{method!r} with --format {format!r} calibrates on these texts/windows")
    cal_texts = inputs.text_data(calib_data, "--calib-data", text_field) if calibrates else None
    eval_texts = inputs.text_data(eval_data, "--eval-data", text_field)
    if calib_data is not None and not calibrates:
        from floatlab.cli.output import warn
        warn(f"--calib-data is not read: method {method!r} does not calibrate")

    from floatlab.models.loading import linear_layers
    from floatlab.ptq.apply import quantize_model
    from floatlab.ptq.compare import CompareOptions, calibration_batches, data_record, measure_single
    from floatlab.parallel import release_memory
    from floatlab.ptq.io import save_quantized

    if blockwise:
        return _ptq_blockwise(model, cfg, out, t0, pairs=pairs, windows=windows, window=window, calib=calib,
                              calibrates=calibrates, cal_texts=cal_texts, eval_texts=eval_texts, policy=policy,
                              overrides=overrides)
    lm = inputs.load(model, device=dev)
    inputs.check_data(lm, pairs=pairs, windows=windows, window=window, calib=calib, calibrates=calibrates,
                      calib_data=cal_texts, eval_data=eval_texts)
    layers = linear_layers(lm.model)
    inputs.check_overrides(overrides, list(layers))
    inputs.check_layers(layers, cfg, "--format/--pad/--group-size")
    # quantize_model lets each fp32 layer go once it is swapped; a weight that lies in the
    # checkpoint's memory mapping keeps its pages resident until they are dropped too
    from floatlab.ptq.compare import CheckpointWeights
    fp32 = CheckpointWeights.check(lm, layers) if cfg.steps()[0] == () and cfg.steps()[1] in ("rtn", "gptq") else None
    del layers
    opts = CompareOptions(pairs=pairs, windows=windows, window=window, calib=calib, calib_data=cal_texts,
                          eval_data=eval_texts, nonfinite_tokens=policy, device=str(dev))
    compile_note()
    with progress():
        batches = calibration_batches(lm, calib, opts) if calibrates else []
        ref = copy.deepcopy(lm.model) if lm.kind == "encoder" else None
        # layers keep their packed codes (decoded in each forward pass: the same numbers); passes
        # over the fp32 model hold one layer's checkpoint-mapped pages at a time
        with contextlib.nullcontext() if fp32 is None else fp32.paged(lm.model):
            qweights = quantize_model(lm.model, cfg, calib=batches, released=None if fp32 is None else fp32.release,
                                      packed=True, read=None if fp32 is None else fp32.drop)
            release_memory()
            say(f"quantized {plural(len(qweights), 'layer')} ({cfg.label()}) in {time.time() - t0:.1f}s; measuring ...")
            metric = measure_single(lm, lm.model, opts, ref_model=ref)
    show_table(f"{cfg.label()} on {lm.name}", ("metric", "value"), [[k, str(v)] for k, v in metric.items()],
               right=("value",))
    save_quantized(out, lm, lm.model, cfg, qweights, metric, command=command_line(),
                   data=data_record(opts, calibrates))
    say(f"wrote {out / CONFIG} and {out / WEIGHTS} in {time.time() - t0:.1f}s")


def _ptq_blockwise(model, cfg, out, t0, *, pairs, windows, window, calib, calibrates, cal_texts, eval_texts,
                   policy, overrides) -> None:
    """``floatlab ptq --blockwise``: the model built without weights, quantized and written one
    transformer block at a time (:func:`floatlab.ptq.blockwise.quantize_blockwise`)."""
    from floatlab.cli import inputs
    from floatlab.cli.output import flag_errors
    from floatlab.eval.metrics import adds_bos
    from floatlab.models.lazy import load_lazy
    from floatlab.models.loading import linear_layers
    from floatlab.ptq.compare import CompareOptions, calibration_batches, data_record, evaluation_windows
    from floatlab.ptq.blockwise import quantize_blockwise
    from floatlab.ptq.io import CONFIG

    with flag_errors("--model"):
        lm = load_lazy(model, log=inputs._log)
    inputs.check_data(lm, pairs=pairs, windows=windows, window=window, calib=calib, calibrates=calibrates,
                      calib_data=cal_texts, eval_data=eval_texts)
    layers = linear_layers(lm.model)
    inputs.check_overrides(overrides, list(layers))
    inputs.check_layers(layers, cfg, "--format/--pad/--group-size")
    opts = CompareOptions(pairs=pairs, windows=windows, window=window, calib=calib, calib_data=cal_texts,
                          eval_data=eval_texts, nonfinite_tokens=policy)
    compile_note()
    bos = adds_bos(lm.tokenizer)
    with progress():
        batches = calibration_batches(lm, calib, opts) if calibrates else []
        wins = evaluation_windows(lm, opts, bos)
        metric = quantize_blockwise(lm, cfg, batches, wins, out, bos=bos, command=command_line(),
                                    data=data_record(opts, calibrates))
    show_table(f"{cfg.label()} on {lm.name} (block by block)", ("metric", "value"),
               [[k, str(v)] for k, v in metric.items()], right=("value",))
    say(f"wrote {out / CONFIG} and one tensor file per block in {time.time() - t0:.1f}s")


def _parse_override(text: str, pad: bool = True):
    """``GLOB=WFORMAT[:AFORMAT]`` -> ``(glob, weight spec or None, act spec or None)``."""
    from floatlab.cli import inputs

    if "=" not in text:
        raise CliError(f"{text!r}: expected GLOB=WFORMAT[:AFORMAT], e.g. '*.down_proj=int8'", "--override")
    pattern, _, fmts = text.partition("=")
    if not pattern.strip():
        raise CliError(f"{text!r}: the layer pattern before '=' is empty", "--override")
    w, _, a = fmts.partition(":")

    def spec(f):
        f = f.strip()
        return None if f.lower() in ("", "fp32", "none") else inputs.spec(f, "--override", pad)
    return (pattern.strip(), spec(w), spec(a))


def register(app: typer.Typer) -> None:
    app.command("ptq")(ptq_command)
