"""``floatlab eval DIR``: reload a ``floatlab ptq`` output and reproduce its metric."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from floatlab.cli.output import CliError, error_line, progress, say, show_table


def check_ptq_folder(folder: Path, flag: str = "FOLDER") -> dict:
    """The saved ``config.json`` of a ``floatlab ptq`` output folder, checked before any loading."""
    from floatlab.ptq.io import CONFIG, FORMAT_VERSION, WEIGHTS

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
    if not (folder / WEIGHTS).is_file():
        raise CliError(f"{folder} has {CONFIG} but no {WEIGHTS}; run `floatlab ptq` again", flag)
    return saved


def eval_command(folder: Path = typer.Argument(..., help="a folder written by `floatlab ptq`")) -> None:
    """Reload the quantized model in FOLDER and recompute the metric recorded at save time."""
    from floatlab.cli import inputs

    t0 = time.time()
    saved = check_ptq_folder(folder)
    inputs.resolve(saved["model"], flag=f"{folder}/config.json: model")

    from floatlab.ptq.compare import CompareOptions, measure_single
    from floatlab.ptq.io import load_quantized

    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        lm, cfg, saved = load_quantized(folder, log=say)
    except (ValueError, KeyError, OSError) as err:       # a damaged or hand-edited folder
        raise CliError(f"cannot rebuild the quantized model: {err}", str(folder)) from None
    rec = saved.get("metric", {})
    opts = CompareOptions(pairs=rec.get("pairs", 100), windows=rec.get("windows", 16), window=rec.get("window", 256))
    with progress():
        ref = inputs.load(saved["model"]).model if lm.kind == "encoder" and "cos_mean" in rec else None
        metric = measure_single(lm, lm.model, opts, ref_model=ref)
    same = all(rec.get(k) == v for k, v in metric.items())
    show_table(f"{cfg.label()} on {saved['model']}", ("metric", "now", "saved", "check"),
               [[k, str(v), str(rec.get(k)), "identical" if rec.get(k) == v else "DIFFERENT"]
                for k, v in metric.items()], right=("now", "saved"))
    if not same:
        error_line(f"metric differs from the saved one ({time.time() - t0:.1f}s)")
        raise typer.Exit(1)
    say(f"reproduced exactly ({time.time() - t0:.1f}s)", style="green")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
