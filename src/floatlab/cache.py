"""Where floatlab keeps what it builds or prepares: ``$FLOATLAB_CACHE`` or ``~/.cache/floatlab``.

``models/`` holds prepared built-in models (:mod:`floatlab.models.registry`), ``native/`` the
compiled native kernels (:mod:`floatlab.kernels.native`).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FLOATLAB_CACHE`` or ``~/.cache/floatlab``."""
    root = os.environ.get("FLOATLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "floatlab")
    return Path(root)
