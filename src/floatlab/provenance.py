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


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (``{}`` where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _cpu_model(info: dict[str, str]) -> str:
    return info.get("model name") or platform.processor() or platform.machine()


def _cpu_id(info: dict[str, str]) -> str | None:
    """``"family 25 model 17 stepping 1"``: a virtual machine's model name is often just the
    vendor's ("AMD EPYC"), while the generation behind it decides which BLAS kernels run (Zen 3
    without AVX-512 vs Zen 4 with it), and so the last bits of a float32 result."""
    fields = [(k, info.get("cpu family" if k == "family" else k)) for k in ("family", "model", "stepping")]
    return " ".join(f"{k} {v}" for k, v in fields if v) or None


def environment() -> dict:
    """Versions of floatlab and the libraries it used (installed ones only), and the machine.

    Returns a JSON-able dict: ``{"versions": {package: version}, "python": ..., "platform": ...,
    "cpu": ..., "cpu_id": family/model/stepping, "cpu_capability": the instruction set torch's
    CPU kernels dispatch on ("AVX512", "AVX2", ...), "cpu_count": ..., "torch_threads": ...,
    "cuda": device name or None, "time_utc": ISO 8601}``. A float32 result can differ in its last
    bits between machines whose ``cpu_id``/``cpu_capability`` differ (the BLAS picks other
    kernels, which sum in another order), and after many steps more than that (docs/ptq.md).
    """
    import torch

    versions = {p: v for p in _PACKAGES if (v := _version(p)) is not None}
    if "floatlab" not in versions:          # run from a source tree without installing
        from floatlab import __version__
        versions["floatlab"] = __version__
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info = _cpuinfo()
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(info),
        "cpu_id": _cpu_id(info),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
