"""Files floatlab writes: complete or not at all, with the permissions the umask asks for.

Every result, report, plot and tensor file is first written to a temporary file in the same
folder and then renamed over the target (an atomic step on POSIX file systems), so a run that
fails or is killed while writing leaves either the previous file or none, never half of one.
The temporary file gets the mode an ordinary ``open(path, "w")`` would give (``0o666`` minus the
umask) before the rename: ``tempfile.mkstemp`` (and libraries that write through it, such as
``safetensors``) create files readable by their owner only (``0o600``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["umask", "atomic_path", "write_text", "write_bytes", "write_json"]


def umask() -> int:
    """The process's umask (read from /proc where available; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception the file
    written there gets the umask's mode and replaces ``path``; otherwise it is removed.

    The temporary name keeps ``path``'s suffix, so writers that infer a format from it
    (matplotlib's ``savefig``) behave as with ``path``. Raises the writer's exceptions, and
    ``OSError`` (naming ``path``) when the folder is missing or cannot hold a new file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as err:         # name the file asked for, not the temporary one
        raise type(err)(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``Path(path)``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``Path(path)``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, **kwargs) -> Path:
    """``json.dumps(obj, indent=2, **kwargs)`` plus a newline, written atomically. The text is
    built before anything is written, so an object that cannot be serialized leaves no file."""
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **kwargs) + "\n")
