"""Where a number came from: library versions and the machine, stored beside every result.

Every ``results.json`` / ``summary.json`` floatlab writes carries :func:`environment` under the
key ``"environment"``, so a figure in a table can be traced to the software and hardware that
made it.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata

_PACKAGES = ("floatlab", "torch", "transformers", "numpy", "safetensors", "compressed-tensors",
             "lm-eval", "datasets", "peft", "scipy")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions of floatlab and the libraries it used (installed ones only), and the machine.

    Returns a JSON-able dict: ``{"versions": {package: version}, "python": ..., "platform": ...,
    "cpu": ..., "cpu_count": ..., "torch_threads": ..., "cuda": device name or None,
    "time_utc": ISO 8601}``.
    """
    import torch

    versions = {p: v for p in _PACKAGES if (v := _version(p)) is not None}
    if "floatlab" not in versions:          # run from a source tree without installing
        from floatlab import __version__
        versions["floatlab"] = __version__
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
