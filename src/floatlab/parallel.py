"""Several processes (``torchrun``) and devices for the commands that run models.

``torchrun --nproc_per_node N -m floatlab.cli compare ...`` starts N copies of a command; each
finds its rank in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and
:func:`init_from_env` joins them in one process group: ``gloo`` on the CPU, ``nccl`` when the
device is CUDA (each process then takes the GPU of its local rank). Work is split with
:func:`my_share` and the pieces are collected on rank 0 with :func:`gather`.
"""

from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the running process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) among several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(device: str | None) -> torch.device:
    """The ``torch.device`` for a ``--device`` value (``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None``
    is the CPU). ``"cuda"`` in a process started by ``torchrun`` is the GPU of its local rank.
    Raises ``ValueError`` for an unknown device, a CUDA device without CUDA, or an index beyond
    the GPUs present."""
    text = (device or "cpu").strip().lower()
    try:
        dev = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: floatlab runs models on cpu or cuda")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0)
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices")
    return dev


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Join the process group that ``torchrun`` set up in the environment (no-op when started
    alone); returns ``(rank, world size)``. Backend: ``nccl`` for CUDA, ``gloo`` otherwise."""
    import torch.distributed as dist

    if not launched():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return world()


def my_share(n: int, rank: int | None = None, size: int | None = None) -> list[int]:
    """The indices of ``n`` work items this rank does: ``rank, rank + size, ...`` (round robin)."""
    r, w = world() if rank is None else (rank, size)
    return list(range(r, n, w))


def gather(obj, dst: int = 0) -> list | None:
    """Every rank's ``obj`` as a list on rank ``dst`` (``None`` elsewhere); ``[obj]`` alone."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (``obj`` itself alone)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def finish() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


_malloc_trim: list = []            # glibc's malloc_trim, looked up once (None: not available)


def trim_allocator() -> None:
    """Hand the C allocator's free memory back to the system (glibc ``malloc_trim(0)``; a no-op
    elsewhere): freed tensors otherwise stay in the allocator's arenas and count as resident.
    About 5 ms, so cheap enough to call after each layer (``floatlab ptq`` RTN on SmolLM2: a
    1.85 instead of a 1.16 GiB peak while quantizing without it)."""
    if not _malloc_trim:
        try:
            import ctypes
            _malloc_trim.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _malloc_trim.append(None)
    if _malloc_trim[0] is not None:
        _malloc_trim[0](0)


def release_memory() -> None:
    """Give freed memory back to the operating system: Python's garbage collector, then
    :func:`trim_allocator`, and CUDA's cache when CUDA is in use."""
    import gc

    gc.collect()
    trim_allocator()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
