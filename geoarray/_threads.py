"""Torch's thread budget for predict's block tasks: dask threads x torch threads <= cores, set while tasks run
and given back to the process after the last one (``torch.set_num_threads`` is process-wide)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.Lock()


def _thread_budget() -> int:
    """Torch threads per task: dask threads x torch threads <= cores (oversubscription costs ~2.5x)."""
    cores = os.cpu_count() or 1
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a distributed worker: the local threaded scheduler
        import dask

        return max(1, cores // max(1, int(dask.config.get("num_workers", None) or cores)))
    if os.environ.get("OMP_NUM_THREADS"):  # the Nanny has already budgeted threads per worker
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, cores // max(1, worker.state.nthreads))


_ACTIVE = 0
_SAVED_THREADS: int | None = None


@contextmanager
def torch_threads() -> Iterator[None]:
    """Set torch's thread count for the tasks running now, and give the process its own back after the last.

    ``torch.set_num_threads`` is process-wide and predict's tasks often run in the caller's process (dask's
    threaded scheduler): the first task in sets the budget, the last one out restores the caller's value.
    """
    global _ACTIVE, _SAVED_THREADS
    import torch

    with _LOCK:
        if _ACTIVE == 0:
            _SAVED_THREADS = torch.get_num_threads()
            torch.set_num_threads(_thread_budget())
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0 and _SAVED_THREADS is not None:
                torch.set_num_threads(_SAVED_THREADS)
                _SAVED_THREADS = None
