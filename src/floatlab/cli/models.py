"""``floatlab models``: list the built-in models and prepare them in the cache."""

from __future__ import annotations

import typer


def models_command(
    prepare: list[str] = typer.Option([], "--prepare", "-p", help="prepare this built-in model ('all' for every one)"),
) -> None:
    """List built-in models (source package, license, state) and prepare them offline."""
    from rich.console import Console
    from rich.table import Table

    from floatlab.models.registry import BUILTIN_MODELS, ModelError, cache_dir, prepare_model

    console = Console(width=140)
    names = list(BUILTIN_MODELS) if "all" in prepare else prepare
    for name in names:
        try:
            path = prepare_model(name, log=console.print)
            console.print(f"{name}: ready at {path}")
        except ModelError as err:
            console.print(f"[red]error:[/] {err}")
            raise typer.Exit(2)
    table = Table(title=f"built-in models (cache: {cache_dir()})")
    for col in ("name", "kind", "model", "params", "from PyPI", "license", "baseline", "ready"):
        table.add_column(col)
    for m in BUILTIN_MODELS.values():
        table.add_row(m.name, m.kind, m.title, m.params, m.source, m.license, m.baseline_note,
                      "yes" if m.is_prepared() else "no")
    console.print(table)
    console.print("Any local Hugging Face model folder (safetensors; bert, llama, mistral, qwen2) works via --model PATH.")


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
