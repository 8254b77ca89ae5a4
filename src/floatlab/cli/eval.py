"""``floatlab eval DIR``: reload a ``floatlab ptq`` output and reproduce its metric."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from floatlab.cli.output import CliError, error_line, progress, say, show_table


def check_ptq_folder(folder: Path, flag: str = "FOLDER") -> dict:
    """The saved ``config.json`` of a ``floatlab ptq`` output folder, checked before any loading."""
    from floatlab.ptq.io import CONFIG, FORMAT_VERSION

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise CliError(f"{folder} does not exist; give a folder written by `floatlab ptq --out`", flag)
    if not folder.is_dir():
        raise CliError(f"{folder} is a file; give the folder written by `floatlab ptq --out`", flag)
    cfg = folder / CONFIG
    if not cfg.is_file():
        raise CliError(f"{folder} is not a floatlab ptq output folder (it has no {CONFIG})", flag)
    try:
        saved = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CliError(f"{cfg} is not valid JSON ({err})", flag) from None
    if not isinstance(saved, dict) or saved.get("floatlab_ptq") != FORMAT_VERSION:
        raise CliError(f"{cfg} is not a floatlab ptq config (version "
                       f"{saved.get('floatlab_ptq') if isinstance(saved, dict) else None!r}, "
                       f"expected {FORMAT_VERSION})", flag)
    from floatlab.ptq.io import weight_files

    missing = [f for f in weight_files(saved) if not (folder / f).is_file()]
    if missing:
        raise CliError(f"{folder} has {CONFIG} but no {missing[0]}; run `floatlab ptq` again", flag)
    return saved


def eval_command(
    folder: Path = typer.Argument(..., help="a folder written by `floatlab ptq`"),
    model: str = typer.Option(None, "--model", "-m", help="the source model's folder, if it moved since `floatlab ptq` (default: the recorded one)"),
    eval_data: Path = typer.Option(None, "--eval-data", help="the evaluation data, if it moved (default: the recorded path; its SHA-256 must match)"),
    device: str = typer.Option("cpu", "--device", help="where the model runs: cpu, cuda, cuda:N"),
) -> None:
    """Reload the quantized model in FOLDER and recompute the metric recorded at save time."""
    from floatlab.cli import inputs
    from floatlab.models.registry import ModelError
    from floatlab.ptq.io import source_model

    t0 = time.time()
    saved = check_ptq_folder(folder)
    dev = inputs.device(device)
    try:
        src = source_model(saved, model, f"{folder}/config.json")
    except ModelError as err:
        raise CliError(str(err), "--model" if model is not None else str(folder)) from None
    inputs.resolve(src, flag="--model" if model is not None else f"{folder}/config.json: model")
    eval_texts = _recorded_eval_data(saved, eval_data, folder)

    from floatlab.ptq.compare import CompareOptions, measure_single
    from floatlab.ptq.io import load_quantized

    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        lm, cfg, saved = load_quantized(folder, log=say, model=src, device=dev)
    except (ValueError, KeyError, OSError) as err:       # a damaged or hand-edited folder
        raise CliError(f"cannot rebuild the quantized model: {err}", str(folder)) from None
    rec = saved.get("metric", {})
    opts = CompareOptions(pairs=rec.get("pairs", 100), windows=rec.get("windows", 16), window=rec.get("window", 256),
                          eval_data=eval_texts, device=str(dev))
    with progress():
        ref = inputs.load(src, device=dev).model if lm.kind == "encoder" and "cos_mean" in rec else None
        metric = measure_single(lm, lm.model, opts, ref_model=ref)
    same = all(rec.get(k) == v for k, v in metric.items())
    show_table(f"{cfg.label()} on {saved['model']}", ("metric", "now", "saved", "check"),
               [[k, str(v), str(rec.get(k)), "identical" if rec.get(k) == v else "DIFFERENT"]
                for k, v in metric.items()], right=("now", "saved"))
    if not same:
        error_line(f"metric differs from the saved one ({time.time() - t0:.1f}s)")
        raise typer.Exit(1)
    say(f"reproduced exactly ({time.time() - t0:.1f}s)", style="green")


def _recorded_eval_data(saved: dict, path, folder: Path):
    """The user's evaluation data a saved result was measured on (``None``: the built-in text),
    read from ``path`` or the recorded path, and checked to be the same (SHA-256)."""
    from floatlab.cli import inputs

    rec = ((saved.get("data") or {}).get("evaluation") or {})
    if rec.get("kind") in (None, "builtin"):
        if path is not None:
            raise CliError("the saved result was measured on the built-in text, not on a file", "--eval-data")
        return None
    flag = "--eval-data" if path is not None else f"{folder}/config.json: data"
    where = path if path is not None else rec["path"]
    if path is None and not Path(where).exists():
        raise CliError(f"the saved result was measured on {where}, which does not exist any more; pass where that "
                       "data is now with --eval-data PATH", flag)
    data = inputs.text_data(where, flag, rec.get("text_field"))
    if data.sha256 != rec.get("sha256"):
        raise CliError(f"{where} is not the data the result was measured on (sha256 {data.sha256[:16]}..., recorded "
                       f"{str(rec.get('sha256'))[:16]}...)", flag)
    return data


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
