"""Dask clusters: ``cluster()`` gives a client on the best cluster available.

dask-cuda's ``LocalCUDACluster`` (one worker per GPU) when GPUs and dask-cuda are there, else a
``LocalCluster`` of worker processes, or a client of an existing scheduler. Pass the client to
``geoarray.fit(..., client=client)`` (one DDP rank per worker) or use it around ``geoarray.predict``.

Examples
--------
>>> import geoarray
>>> with geoarray.distributed.cluster(n_workers=2) as client:  # doctest: +SKIP
...     ckpt = geoarray.fit(cube, task="segmentation", client=client, out="unet.safetensors")
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any, Literal

from geoarray._devices import cuda_count
from geoarray.errors import TrainError

__all__ = ["cluster"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def cluster(
    address: str | None = None,
    *,
    gpus: Literal["auto"] | bool = "auto",
    n_workers: int | None = None,
    threads_per_worker: int = 1,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the best cluster available, closed on exit.

    Parameters
    ----------
    address
        Scheduler address (``"tcp://host:8786"``) to connect to an existing cluster.
    gpus
        ``"auto"``: LocalCUDACluster (one worker per GPU) when CUDA GPUs and dask-cuda are available, else
        CPU workers (with a warning that says why, when there are GPUs: dask-cuda missing or not importable,
        more ``n_workers`` than GPUs); ``True``: require it (those cases raise); ``False``: CPU workers.
    n_workers, threads_per_worker
        Size of a LocalCluster (default: one single-threaded worker process per core).

    Examples
    --------
    >>> with geoarray.distributed.cluster() as client:  # doctest: +SKIP
    ...     geoarray.fit(cube, task="segmentation", client=client, ...)
    """
    from distributed import Client, LocalCluster

    for name, v in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise TrainError(f"{name}={v!r}; expected a positive integer (or leave it out for the default).")
    if address:
        with Client(address) as client:
            yield client
        return
    local: Any = None
    saved: dict[str, str | None] | None = None  # malloc variables to put back (a LocalCluster of ours)
    if gpus and cuda_count() > 0:
        try:  # dask-cuda is an optional extra and fails to import without CUDA bindings
            from dask_cuda import LocalCUDACluster

            local = LocalCUDACluster(n_workers=n_workers, threads_per_worker=threads_per_worker)
        except Exception as e:
            if gpus is True:
                raise TrainError(f"gpus=True, but {cuda_cluster_problem(e, n_workers)}.") from None
            log.warning("GPUs found, but %s; using CPU workers", cuda_cluster_problem(e, n_workers))
    elif gpus is True:
        raise TrainError("gpus=True but no CUDA device is visible.")
    if local is None:
        n = n_workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
        # no dashboard; the scheduler's HTTP server (health, metrics) on a free local port: its default, 8787,
        # is often taken (another cluster), and distributed then warns on stderr
        import dask

        from geoarray._heap import environ_now, restore_environ, worker_config

        saved = environ_now()  # the Nanny leaves its pre-spawn variables in this process's environment
        try:
            with dask.config.set(worker_config()):  # its workers keep the memory torch frees (geoarray._heap)
                local = LocalCluster(
                    n_workers=n,
                    threads_per_worker=threads_per_worker,
                    processes=True,
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
        except BaseException:
            restore_environ(saved)
            raise
    try:
        with Client(local) as client:
            if type(local) is LocalCluster:  # workers that exit in ~0.1 s on close (see _worker_exit)
                from geoarray._worker_exit import FastExit

                client.register_plugin(FastExit())
            yield client
    finally:
        local.close()
        if saved is not None:
            restore_environ(saved)


def cuda_cluster_problem(error: Exception, n_workers: int | None) -> str:
    """Why ``LocalCUDACluster`` could not start, and the fix, for a message."""
    if isinstance(error, ImportError):
        return f"dask-cuda cannot be imported ({error}); install the extra: pip install 'geoarray[gpu]'"
    fix = f" (n_workers={n_workers}: at most one worker per GPU)" if n_workers is not None else ""
    return f"dask-cuda's LocalCUDACluster did not start{fix}: {type(error).__name__}: {error}"
