"""Torch's thread budget for predict's block tasks: dask threads x torch threads <= cores, set in each task's
thread while it runs and given back to that thread afterwards (under OpenMP the count is per thread)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def torch_threads() -> Iterator[None]:
    """Set torch's thread count for this task, in this thread, and give the thread its own back afterwards.

    torch's count is per thread under OpenMP: ``torch.set_num_threads`` in one thread leaves a thread that has
    already run torch ops at its own count. Set in one dask thread only (as before), the other dask thread kept
    all the cores: ``2 x 2`` threads on 2 cores, and blocks whose bytes depended on which thread ran them.
    Setting it costs ~0.1 ms, next to a block's tens of ms.
    """
    import torch

    budget = _thread_budget()
    own = torch.get_num_threads()  # this thread's count
    if own != budget:
        torch.set_num_threads(budget)
    try:
        yield
    finally:
        if own != budget:
            torch.set_num_threads(own)
