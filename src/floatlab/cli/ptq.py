"""``floatlab ptq``: quantize a model and save it as packed QTensors plus a config."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import typer


def ptq_command(
    model: str = typer.Option("minilm", "--model", "-m", help="built-in model name or local HF model folder"),
    format: str = typer.Option("hif4", "--format", "-f", help="weight format"),
    act_format: str = typer.Option(None, "--act-format", help="activation format (default: weight-only)"),
    method: str = typer.Option("rtn", "--method", help="rtn | gptq | awq | smoothquant | rotate, joined with '+'"),
    calib: int = typer.Option(32, "--calib", help="calibration texts / windows"),
    override: list[str] = typer.Option([], "--override", help="per-layer format: 'GLOB=WFORMAT[:AFORMAT]' ('fp32' keeps a role)"),
    pairs: int = typer.Option(64, "--pairs", help="encoders: retrieval pairs for the recorded metric"),
    windows: int = typer.Option(16, "--windows", help="causal LMs: perplexity windows"),
    pad: bool = typer.Option(True, "--pad/--no-pad", help="block formats: pad a layer whose width is not a multiple of the block"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
) -> None:
    """Quantize MODEL's linear layers and save them (QTensors in safetensors + config.json)."""
    from rich.console import Console

    from floatlab.models.loading import ModelError, load_model
    from floatlab.ptq.apply import quantize_model
    from floatlab.ptq.compare import CompareOptions, calibration_batches, measure_single
    from floatlab.ptq.config import PTQConfig
    from floatlab.ptq.io import save_quantized
    from floatlab.ptq.quantizer import QuantSpec

    console = Console(width=140)
    t0 = time.time()
    try:
        overrides = tuple(_parse_override(o) for o in override)
        cfg = PTQConfig(weight=QuantSpec(format, pad=pad), act=QuantSpec(act_format, pad=pad) if act_format else None,
                        method=method, overrides=overrides)
        lm = load_model(model, log=console.print)
        opts = CompareOptions(pairs=pairs, windows=windows, calib=calib)
        batches = calibration_batches(lm, calib, opts) if any(
            m in method for m in ("gptq", "awq", "smoothquant")) else []
        ref = copy.deepcopy(lm.model) if lm.kind == "encoder" else None
        qweights = quantize_model(lm.model, cfg, calib=batches)
        console.print(f"quantized {len(qweights)} layers ({cfg.label()}) in {time.time() - t0:.1f}s; measuring ...")
        metric = measure_single(lm, lm.model, opts, ref_model=ref)
        save_quantized(out, lm, lm.model, cfg, qweights, metric)
    except (ModelError, ValueError, TypeError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    console.print(f"metric: {metric}")
    console.print(f"wrote {out} in {time.time() - t0:.1f}s")


def _parse_override(text: str):
    if "=" not in text:
        raise ValueError(f"--override {text!r}: expected GLOB=WFORMAT[:AFORMAT]")
    pattern, _, fmts = text.partition("=")
    w, _, a = fmts.partition(":")
    none = lambda f: None if f in ("", "fp32", "none") else f  # noqa: E731
    return (pattern, none(w), none(a))


def register(app: typer.Typer) -> None:
    app.command("ptq")(ptq_command)
