"""The ``floatlab`` command: thin wrappers that parse, call the library, and print."""

from __future__ import annotations

import typer

from floatlab.cli.formats import formats_command

app = typer.Typer(
    name="floatlab",
    help="floatlab: low-precision number formats for deep learning, bit-exact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("formats")(formats_command)


def _register_optional() -> None:
    """Subcommands from optional subpackages (each module exposes a typer app or command)."""
    try:
        from floatlab.cli_gemm import app as gemm_app
    except ImportError:
        return
    app.add_typer(gemm_app, name="gemm", help="Precision-recovery GEMM: error analysis of FP32-from-FP16/BF16 schemes.")


_register_optional()


def main() -> None:
    app()
