"""Progress of long work, reported by whoever runs it and never drawn by the numerics.

Library loops that can take minutes (calibration passes, GPTQ/AWQ/SmoothQuant/rotation layer by
layer, evaluation batches) announce their steps through :func:`task` or :func:`track`. Nothing
is shown unless the caller installed a reporter with :func:`reporting`; without one both are
free no-ops, so library users see no output and the numerics stay screen-free (``formats``,
``plain``, ``kernels`` and ``ops`` never import this module).

>>> from floatlab import progress
>>> with progress.reporting(progress.LineReporter()):          # doctest: +SKIP
...     for name in progress.track(["q", "k", "v"], "gptq", unit="layers"):
...         pass
gptq: 3/3 layers [0.0 s]

The command line installs :func:`for_stream`: rich progress bars when the stream is a
terminal, plain lines otherwise (a log file or a pipe then shows progress as it happens).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")

__all__ = ["Reporter", "LineReporter", "RichReporter", "Task", "task", "track", "scope", "reporting",
           "current", "for_stream"]


class Reporter:
    """Receives the steps of every running task. This base class shows nothing."""

    def start(self, label: str, total: int | None, unit: str) -> object:
        """A new task; returns a handle passed back to :meth:`update` and :meth:`finish`."""
        return None

    def update(self, handle: object, completed: int, note: str | None) -> None:
        """``completed`` steps of the task are done; ``note`` names the last one (e.g. a layer)."""

    def finish(self, handle: object, completed: int) -> None:
        """The task ended (normally or not) after ``completed`` steps."""


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("floatlab_progress", default=None)


def current() -> Reporter | None:
    """The reporter installed by :func:`reporting`, or ``None``."""
    return _current.get()


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[Reporter | None]:
    """Install ``reporter`` for the work done inside the ``with`` block (``None``: silence)."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


_scope: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("floatlab_progress_scope", default=())


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix the labels of the tasks started inside the block with ``name`` (e.g. the format
    that ``floatlab compare`` is working on: ``mxfp4 / gptq: 12/36 layers``)."""
    token = _scope.set((*_scope.get(), name))
    try:
        yield
    finally:
        _scope.reset(token)


class Task:
    """One running task: call :meth:`advance` after each step. Use as a context manager."""

    def __init__(self, label: str, total: int | None = None, unit: str = ""):
        self.label = " / ".join((*_scope.get(), label))
        self.total, self.unit = total, unit
        self.completed = 0
        self._reporter = current()
        self._handle = self._reporter.start(self.label, total, unit) if self._reporter else None
        self._open = True

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.completed += n
        if self._reporter is not None:
            self._reporter.update(self._handle, self.completed, note)

    def close(self) -> None:
        if self._open and self._reporter is not None:
            self._reporter.finish(self._handle, self.completed)
        self._open = False

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task(label: str, total: int | None = None, unit: str = "") -> Task:
    """A :class:`Task` for ``with`` blocks: ``with task("calibration", 8, "batches") as t: ...``."""
    return Task(label, total, unit)


def track(items: Iterable[T], label: str, *, total: int | None = None, unit: str = "",
          note: Callable[[T], str] | None = None) -> Iterator[T]:
    """Yield ``items`` and report one step after each; ``note(item)`` names the step."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Task(label, total, unit) as t:
        for item in items:
            yield item
            t.advance(1, note(item) if note else None)


class LineReporter(Reporter):
    """Plain lines for logs and pipes: ``label: k/total unit (note) [elapsed]``.

    A task prints a line when it ends, and while it runs whenever ``every`` seconds passed since
    its last line (so a short task gives one line, a long one a line every ``every`` seconds).
    """

    def __init__(self, stream: IO[str] | None = None, every: float = 10.0):
        self._stream, self.every = stream, every

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def start(self, label, total, unit):
        now = time.monotonic()
        return {"label": label, "total": total, "unit": unit, "t0": now, "last": now, "printed": None}

    def _line(self, h, completed, note) -> None:
        tot = f"/{h['total']}" if h["total"] is not None else ""
        unit = f" {h['unit']}" if h["unit"] else ""
        extra = f" ({note})" if note else ""
        print(f"{h['label']}: {completed}{tot}{unit}{extra} [{time.monotonic() - h['t0']:.1f} s]",
              file=self.stream, flush=True)
        h["last"], h["printed"] = time.monotonic(), completed

    def update(self, h, completed, note):
        if time.monotonic() - h["last"] >= self.every:
            self._line(h, completed, note)

    def finish(self, h, completed):
        if h["printed"] != completed:
            self._line(h, completed, None)


class RichReporter(Reporter):
    """rich progress bars on a terminal; a finished task leaves one summary line behind."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                             console=self.console, transient=True)
        self._running = 0

    def start(self, label, total, unit):
        from rich.markup import escape

        if self._running == 0:
            self._bar.start()
        self._running += 1
        tid = self._bar.add_task(escape(label), total=total, note="")
        return {"id": tid, "label": label, "unit": unit, "t0": time.monotonic()}

    def update(self, h, completed, note):
        from rich.markup import escape

        self._bar.update(h["id"], completed=completed, note=escape(note or ""))

    def finish(self, h, completed):
        from rich.text import Text

        self._bar.remove_task(h["id"])
        unit = f" {h['unit']}" if h["unit"] else ""
        self._bar.console.print(Text(f"{h['label']}: {completed}{unit} in {time.monotonic() - h['t0']:.1f} s",
                                     style="dim"))
        self._running -= 1
        if self._running == 0:
            self._bar.stop()


def for_stream(stream: IO[str] | None = None) -> Reporter:
    """Bars when ``stream`` (default: stderr) is a terminal, plain lines otherwise."""
    s = stream if stream is not None else sys.stderr
    try:
        tty = s.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        from rich.console import Console
        return RichReporter(Console(file=stream) if stream is not None else Console(stderr=True))
    return LineReporter(stream)
