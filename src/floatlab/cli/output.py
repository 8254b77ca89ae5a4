"""What every ``floatlab`` command prints, and how it refuses bad input.

* :func:`say`, :func:`warn`: messages, printed as plain text: never parsed as rich markup, so
  text in square brackets (``pip install 'floatlab[models]'``, shapes, ranges) survives.
* :func:`show_table`: a table that never cuts a number. On a terminal it is a rich table when it
  fits the terminal's width (text cells wrap at spaces, numbers never); a table too wide for the
  terminal, and any output to a file or a pipe, is printed as plain Markdown rows, complete.
* :class:`CliError` and the ``check_*`` helpers: input checks that run before any model is
  loaded or any work starts. The main command's group (:class:`FloatlabGroup`) turns a
  :class:`CliError`, a click usage error or a :class:`floatlab.models.ModelError` into one
  ``error: ...`` line on stderr and exit code 2, never a traceback.
* :func:`progress`: the reporter for :mod:`floatlab.progress` (bars on a terminal, lines in logs).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import click
import typer
from typer.core import TyperCommand, TyperGroup


class CliError(Exception):
    """A user mistake found by a command: printed as ``error: FLAG: message``, exit code 2."""

    def __init__(self, message: str, flag: str | None = None):
        super().__init__(f"{flag}: {message}" if flag else message)
        self.flag = flag


# ---- messages ----------------------------------------------------------------------------------
def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, markup=False, emoji=False)


def _is_terminal(stream) -> bool:
    return _console(stream is sys.stderr).is_terminal


def say(text: str = "", style: str | None = None) -> None:
    """Print one message on stdout as it is (no markup; on a terminal in ``style``)."""
    if style and _is_terminal(sys.stdout):
        from rich.text import Text
        _console().print(Text(text, style=style), soft_wrap=True)
    else:
        print(text, flush=True)


def warn(text: str) -> None:
    """``warning: text`` on stderr."""
    _prefixed("warning: ", "yellow", text)


def error_line(text: str) -> None:
    """``error: text`` on stderr (the one line a user mistake gets)."""
    _prefixed("error: ", "red", text)


def _prefixed(prefix: str, style: str, text: str) -> None:
    if _is_terminal(sys.stderr):
        from rich.text import Text
        _console(stderr=True).print(Text.assemble((prefix, f"bold {style}"), text), soft_wrap=True)
    else:
        print(prefix + text, file=sys.stderr, flush=True)


# ---- tables ------------------------------------------------------------------------------------
def markdown_rows(columns: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[str] = ()) -> list[str]:
    """A Markdown table, every cell complete, columns padded to a common width."""
    right = set(right)
    cells = [[str(c) for c in columns]] + [[str(c) for c in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def line(r):
        return "| " + " | ".join(c.rjust(w) if columns[i] in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(r, width))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if columns[i] in right else "-" * (w + 2)
                         for i, w in enumerate(width)) + "|"
    return [line(cells[0]), sep, *(line(r) for r in cells[1:])]


def show_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], *,
               right: Iterable[str] = ()) -> None:
    """Print a table; nothing in it is ever cut. ``right``: the columns to right-align."""
    right = set(right)
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    con = _console()
    if con.is_terminal:
        _terminal_table(con, title, list(columns), rows, right)
        return
    print(title, flush=True)
    print(flush=True)
    for line in markdown_rows(columns, rows, right):
        print(line, flush=True)
    print(flush=True)


def _share(least: list[int], natural: list[int], room: int) -> list[int]:
    """Column widths between ``least`` and ``natural`` that add up to at most ``room``: the space
    beyond the least widths goes to the columns that want more, in proportion to their want."""
    if sum(natural) <= room:
        return list(natural)
    spare = room - sum(least)
    want = [nat - lo for lo, nat in zip(least, natural)]
    total = sum(want)
    widths = [lo + (spare * w) // total for lo, w in zip(least, want)]
    for i in sorted(range(len(want)), key=lambda i: want[i] - (widths[i] - least[i]), reverse=True):
        if sum(widths) >= room:
            break
        if widths[i] < natural[i]:
            widths[i] += 1
    return widths


def _terminal_table(con, title: str, columns: list[str], rows: list[list[str]], right: set[str]) -> None:
    """A boxed table if it fits the terminal, else a borderless one, else one record per row
    (``name`` then ``column  value`` lines): whichever fits without breaking a number."""
    from rich.table import Table
    from rich.text import Text

    # the narrowest each column can be without breaking a word (numbers have no spaces), and
    # its natural width (nothing wrapped)
    least = [max(len(w) for c in [col, *(r[i] for r in rows)] for w in (c.split() or [""]))
             for i, col in enumerate(columns)]
    natural = [max(len(c) for c in [col, *(r[i] for r in rows)]) for i, col in enumerate(columns)]
    n = len(columns)
    for style, overhead in (("boxed", 3 * n + 1), ("compact", 2 * n - 2)):
        room = con.width - overhead
        if sum(least) > room:
            continue
        widths = _share(least, natural, room)
        kw = {} if style == "boxed" else {"box": None, "pad_edge": False, "show_edge": False}
        table = Table(title=Text(title), title_justify="left", **kw)
        for col, w in zip(columns, widths):
            table.add_column(Text(col, style="bold underline" if style == "compact" else ""),
                             justify="right" if col in right else "left", width=w, overflow="fold")
        for r in rows:
            table.add_row(*(Text(c) for c in r))
        con.print(table)
        return
    con.print(Text(title), soft_wrap=True)
    key = max(len(c) for c in columns[1:]) if n > 1 else 0
    for r in rows:
        con.print(Text(r[0], style="bold"), soft_wrap=True)
        for col, c in zip(columns[1:], r[1:]):
            con.print(Text(f"  {col.ljust(key)}  {c}"), soft_wrap=True)


# ---- checks before any work --------------------------------------------------------------------
def check_int(value: int, flag: str, minimum: int, maximum: int | None = None, hint: str = "") -> int:
    """``value`` within ``[minimum, maximum]``, else a :class:`CliError` naming ``flag``."""
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise CliError(f"must be {rng}, got {value}" + (f" ({hint})" if hint else ""), flag)
    return value


def check_out_dir(path: Path, flag: str = "--out") -> Path:
    """Make sure ``path`` is (or can become) a folder floatlab can write into: creates it and
    writes and removes a probe file there, so a read-only place, a file in the way or a missing
    permission is found before the work, not after it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"{path} is a file; give a folder (it is created if missing)", flag)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        _created.extend(missing)              # removed again if the command ends in a user error
        fd, probe = tempfile.mkstemp(prefix=".floatlab-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CliError(f"cannot write into {path}: {err.strerror or err}", flag) from None
    return path


_created: list[Path] = []


def _remove_created() -> None:
    """Remove the output folders this command created, if they are still empty."""
    for p in sorted(_created, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()
    _created.clear()


def confirm_overwrite(what: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Ask before replacing an earlier result: yes with ``overwrite``; on a terminal a prompt;
    otherwise a :class:`CliError` that names ``flag``."""
    if overwrite:
        return
    if sys.stdin.isatty() and sys.stdout.isatty():
        if typer.confirm(f"{what}. Overwrite it?", default=False):
            return
        raise CliError(f"{what}; not overwritten (pass {flag} to replace it, or choose another folder)")
    raise CliError(f"{what}; pass {flag} to replace it, or choose another folder")


def check_earlier_result(out: Path | None, names: Iterable[str], overwrite: bool, flag: str = "--overwrite") -> None:
    """Before any work: a command asks before it writes over its own earlier result in ``out`` (any
    of the files ``names``; glob patterns allowed), as ``floatlab ptq`` does: yes with
    ``overwrite``, a prompt on a terminal, otherwise one error naming ``flag``. Other files in
    ``out`` do not count."""
    if out is None:
        return
    out = Path(out).expanduser()
    if not out.is_dir():
        return
    earlier = sorted({p.name for n in names for p in out.glob(n) if p.is_file()})
    if earlier:
        confirm_overwrite(f"{out} holds an earlier result ({', '.join(earlier)})", overwrite, flag)


def parse_choice(text: str, choices: Iterable[str], flag: str) -> str:
    """``text`` matched case-insensitively against ``choices``, with a did-you-mean hint."""
    import difflib

    choices = list(choices)
    low = {c.lower(): c for c in choices}
    if text.lower() in low:
        return low[text.lower()]
    close = difflib.get_close_matches(text.lower(), list(low), n=1)
    hint = f"; did you mean {low[close[0]]!r}?" if close else ""
    raise CliError(f"unknown value {text!r}{hint} (choose from {', '.join(choices)})", flag)


def _current_context():
    """The running command's click context (typer >= 0.2x runs on its own copy of click)."""
    import importlib

    for name in ("typer._click.globals", "click.globals"):
        try:
            ctx = importlib.import_module(name).get_current_context(silent=True)
        except (ImportError, AttributeError):
            continue
        if ctx is not None:
            return ctx
    return None


def command_line() -> str:
    """The running command as a user would type it (non-default options only), for results files."""
    import shlex

    ctx = _current_context()
    if ctx is None:
        return "floatlab " + " ".join(map(shlex.quote, sys.argv[1:]))
    parts = [ctx.command_path]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if getattr(p, "param_type_name", "") == "argument":
            if value is not None:
                parts.append(shlex.quote(str(value)))
            continue
        if value in (None, [], ()) or value == p.default or str(value) == str(p.default):
            continue
        flag = max(p.opts, key=len)
        if getattr(p, "is_flag", False):
            parts.append(flag if value else (p.secondary_opts[0] if p.secondary_opts else ""))
        else:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                parts += [flag, shlex.quote(str(v))]
    return " ".join(x for x in parts if x)


# ---- progress and one-time notes ---------------------------------------------------------------
def progress():
    """The reporter the commands install around their work (bars on a terminal, lines otherwise)."""
    from floatlab.progress import reporting, for_stream

    return reporting(for_stream())


_noted: set[str] = set()


def note_once(key: str, text: str) -> None:
    """Print ``text`` (on stderr, as a note) the first time ``key`` is seen in this process."""
    if key in _noted:
        return
    _noted.add(key)
    _prefixed("note: ", "cyan", text)


def compile_note() -> None:
    """Say once that the first use of a format builds or compiles its kernel (seconds of silence otherwise)."""
    from floatlab.kernels.compiler import compile_available
    from floatlab.kernels.dispatch import resolve_backend

    try:
        backend = resolve_backend(None)
    except ValueError:
        return
    if backend in ("auto", "compiled") and compile_available():
        note_once("compile", "the first use of a format on a large tensor (65,536 values or more) builds its "
                  "kernel: a C++ library compiled once per machine and cached (seconds, the first time), "
                  "or, for what the native kernels do not cover, a torch.compile'd kernel (about 2-12 s, "
                  "once per process); FLOATLAB_FAST=0 uses the uncompiled reference path")


# ---- the boundary: user mistakes become one line -----------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    from floatlab.models.registry import ModelError

    return (CliError, ModelError)


class FloatlabGroup(TyperGroup):
    """The main command group: usage errors, :class:`CliError` and ``ModelError`` end as one
    ``error:`` line (exit code 2); Ctrl-C as ``interrupted`` (exit code 130)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = run_guarded(lambda: super(FloatlabGroup, self).main(
            args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra))
        if standalone_mode:
            sys.exit(code)
        return code


class FloatlabCommand(TyperCommand):
    """The same boundary for a command run as its own program (``python -m floatlab.cli.gemm``)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = run_guarded(lambda: super(FloatlabCommand, self).main(
            args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra))
        if standalone_mode:
            sys.exit(code)
        return code


def _click_exceptions():
    """click's exception module(s): typer >= 0.2x vendors its own copy of click (typer._click)."""
    import typer.core

    mods = [click.exceptions]
    vendored = getattr(typer.core, "_click", None)
    if vendored is not None and vendored.exceptions is not click.exceptions:
        mods.append(vendored.exceptions)
    return mods


_interrupt_hint: list[str] = []


def on_interrupt(hint: str) -> None:
    """Say ``hint`` after ``interrupted`` if Ctrl-C ends this command (e.g. how to resume)."""
    _interrupt_hint[:] = [hint]


@contextlib.contextmanager
def _noting_interrupts(seen: list[bool]) -> Iterator[None]:
    """Record a Ctrl-C before it becomes a ``KeyboardInterrupt``: typer turns that exception into
    a silent exit code 130 inside ``main``, where :func:`run_guarded` cannot see it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def note(signum, frame):
        seen.append(True)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted() -> int:
    error_line("interrupted" + (f"; {_interrupt_hint[0]}" if _interrupt_hint else ""))
    _remove_created()          # only folders still empty: a run's checkpoints stay for the resume
    return 130


def run_guarded(call) -> int:
    """Run a click ``main(standalone_mode=False)`` call; return its exit code, printing a user
    mistake as one line and Ctrl-C as ``error: interrupted`` (exit code 130, with the command's
    :func:`on_interrupt` hint). Other exceptions (bugs) propagate with their traceback."""
    mods = _click_exceptions()
    no_args = tuple(m.NoArgsIsHelpError for m in mods if hasattr(m, "NoArgsIsHelpError"))
    seen: list[bool] = []
    _interrupt_hint.clear()
    try:
        with _noting_interrupts(seen):
            rv = call()
        if seen:
            return _interrupted()
    except no_args as err:
        err.show()
        return 2
    except tuple(m.ClickException for m in mods) as err:
        ctx = getattr(err, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        error_line(err.format_message() + where)
        _remove_created()
        return err.exit_code
    except tuple(m.Abort for m in mods if hasattr(m, "Abort")) + (typer.Abort,):
        if seen:
            return _interrupted()
        error_line("aborted")
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except _user_errors() as err:
        error_line(str(err))
        _remove_created()
        return 2
    _created.clear()
    return rv if isinstance(rv, int) else 0


@contextlib.contextmanager
def flag_errors(flag: str, *kinds: type[BaseException]) -> Iterator[None]:
    """Turn a ``ValueError`` (or ``kinds``) raised by a parser inside the block into a
    :class:`CliError` naming ``flag``."""
    try:
        yield
    except (ValueError, *kinds) as err:
        raise CliError(str(err), flag) from None
