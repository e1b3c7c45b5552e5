"""Processes geoarray owns keep the memory torch frees, instead of handing it back to the kernel.

glibc gives large freed blocks back to the kernel: a block over its mmap threshold (32 MiB at most) is unmapped
when freed, the heap's top is trimmed, and each thread's arena lets go of its heaps. A CNN's feature maps are such
blocks, so on a CPU every forward pass maps them again, and the kernel zeroes each page at its first touch.
Measured with 2 threads of 1 torch thread (predict's way), per input pixel: the default UNet (depth 5, width 32)
through ``stac_features`` took 8.9-9.1 CPU-s and ~860-890k page faults with glibc's defaults, 6.9-8.6 CPU-s and
49-82k faults with the settings below (peak RSS 2.3 -> 2.85 GB; a loaded machine); the B1 UNet 5.4-5.5 CPU-s
against 4.7-4.8 (faults 137-418k -> 0.1-2k); a width-32 UNet on 560² tiles alone ran at 2873 ns/px against 2314
(0.39 -> 0.004 faults/px).

The settings: ``M_MMAP_MAX=0`` (large blocks come from the heap), ``M_TRIM_THRESHOLD`` 2 GiB (the heap's top
stays) and ``M_ARENA_MAX=1`` (one heap for all threads, so a block one thread frees is there for the other). This
is what PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc. A library must not change malloc under
its user's own process, and the arena setting only holds for threads started after it, so geoarray sets them only
where it owns the process, from its start: the ``geoarray`` command (:func:`keep_freed`) and the worker processes
of the LocalCluster it starts (:data:`WORKER_ENV` through distributed's ``pre-spawn-environ``: glibc reads them when
the process starts, and distributed's Nanny sets them in its own environment to pass them on, as it does with its
own ``MALLOC_TRIM_THRESHOLD_``). In your own script, set
the same through the environment: ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647
python run.py``. ``GEOARRAY_KEEP_FREED=0`` leaves malloc alone; so do C libraries other than glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["WORKER_ENV", "environ_now", "keep_freed", "restore_environ", "worker_config"]

_TRIM = 2**31 - 1  # mallopt takes a C int: 2 GiB of free heap top at most stays
_SETTINGS = ((-4, 0), (-1, _TRIM), (-8, 1))  # mallopt's M_MMAP_MAX, M_TRIM_THRESHOLD, M_ARENA_MAX (malloc.h)
WORKER_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM)}
"""The same settings for a process about to start (a dask worker), as glibc's environment variables."""


def _wanted() -> bool:
    return os.environ.get("GEOARRAY_KEEP_FREED", "1") != "0" and platform.libc_ver()[0] == "glibc"


def keep_freed() -> bool:
    """Make this process keep the memory it frees (see the module's doc); True if malloc was tuned. Call it at
    the start of a process geoarray owns, before any thread starts."""
    if not _wanted():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)


def environ_now() -> dict[str, str | None]:
    """This process's values of :data:`WORKER_ENV`'s variables, for :func:`restore_environ`."""
    return {k: os.environ.get(k) for k in WORKER_ENV}


def restore_environ(saved: dict[str, str | None]) -> None:
    """Put the variables back: distributed's Nanny sets ``pre-spawn-environ`` in its own process's environment
    before each spawn, where every later subprocess of the user's would inherit them."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def worker_config() -> dict[str, str]:
    """``dask.config.set`` keys that give the worker processes a Nanny starts :data:`WORKER_ENV` (nothing where
    geoarray leaves malloc alone)."""
    key = "distributed.nanny.pre-spawn-environ"
    return {f"{key}.{k}": v for k, v in WORKER_ENV.items()} if _wanted() else {}
