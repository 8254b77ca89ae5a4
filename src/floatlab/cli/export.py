"""``floatlab export DIR --to compressed-tensors --out OUT``: a ``floatlab ptq`` result as a checkpoint
a serving engine reads (vLLM reads compressed-tensors). Thin: check, call floatlab.export, print."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from floatlab.cli.output import CliError, parse_choice, say

TARGETS = ("compressed-tensors",)


def export_command(
    folder: Path = typer.Argument(..., help="a folder written by `floatlab ptq --out`"),
    to: str = typer.Option("compressed-tensors", "--to", help="checkpoint format: compressed-tensors"),
    out: Path = typer.Option(..., "--out", "-o", help="the checkpoint folder to write (must not exist or be empty)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
    model: str = typer.Option(None, "--model", "-m", help="the source model's folder, if it moved since `floatlab ptq`"),
) -> None:
    """Export the quantized model in FOLDER as a compressed-tensors checkpoint (llm-compressor's format, served by vLLM)."""
    from floatlab.cli.eval import check_ptq_folder
    from floatlab.export.compressed_tensors import ExportError, check_out
    from floatlab.models.registry import ModelError
    from floatlab.ptq.io import source_model

    t0 = time.time()
    parse_choice(to, TARGETS, "--to")
    saved = check_ptq_folder(folder)
    try:
        check_out(out, overwrite, folder)
    except ExportError as err:
        raise CliError(str(err), "--out") from None
    try:
        src = source_model(saved, model, f"{folder}/config.json")
    except ModelError as err:
        raise CliError(str(err), "--model" if model is not None else str(folder)) from None
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise CliError("export needs the compressed-tensors package: pip install 'floatlab[export]'", "--to") from None
    from floatlab.export import export_folder

    try:
        path = export_folder(folder, out, model=src, overwrite=overwrite, log=say)
    except ExportError as err:
        raise CliError(str(err), str(folder)) from None
    say(f"wrote the compressed-tensors checkpoint {path} in {time.time() - t0:.1f}s; load it with "
        "transformers (AutoModelForCausalLM.from_pretrained) or serve it with vLLM")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
