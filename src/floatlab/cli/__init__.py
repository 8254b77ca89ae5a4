"""The ``floatlab`` command: thin wrappers that parse, call the library, and print.

Every command prints through :mod:`floatlab.cli.output` (plain messages, tables that never cut
a number, one ``error:`` line for a user mistake) and checks all of its input before any model
is loaded or any work starts.
"""

from __future__ import annotations

import typer

from floatlab.cli.formats import formats_command
from floatlab.cli.output import FloatlabGroup

app = typer.Typer(
    name="floatlab",
    help="floatlab: low-precision number formats for deep learning, bit-exact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=FloatlabGroup,
    rich_markup_mode=None,      # click's plain help: wraps every word; rich's boxes cut long ones to "…"
)
app.command("formats")(formats_command)


def _version(value: bool) -> None:
    if value:
        import floatlab
        typer.echo(f"floatlab {floatlab.__version__}")
        raise typer.Exit()


@app.callback()
def _main_callback(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print floatlab's version and exit."),
) -> None:
    """floatlab: low-precision number formats for deep learning, bit-exact."""


# Subcommands live in their own modules (floatlab/cli/<name>.py), each with
# ``register(app: typer.Typer) -> None``. A module that is absent or whose optional
# dependencies are missing is skipped, so the core CLI always works.
SUBCOMMANDS = ("gemm", "solve", "compare", "sweep", "advise", "ptq", "eval", "export", "lmeval", "models", "train", "bench")


def _register_optional() -> None:
    import importlib

    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"floatlab.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("floatlab.cli"):
                continue
            raise
        module.register(app)


_register_optional()


def main() -> None:
    app()
