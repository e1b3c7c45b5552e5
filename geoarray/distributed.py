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
from geoarray.errors import ClusterError, TrainError

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

    Raises
    ------
    ClusterError
        ``address`` is not a scheduler address, or no Dask scheduler answers there (a refused port, an unknown
        host, or a port that sends no Dask handshake within 5 s): within seconds, before distributed's own
        30 s of retries.

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
        with _connect(address) as client:
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


#: seconds to wait for a scheduler's TCP port and handshake (distributed retries a refused port for 30 s)
CONNECT_TIMEOUT = 5


def _connect(address: str) -> Any:
    """A Client of the scheduler at ``address``; a ClusterError within seconds when it cannot be one."""
    import socket

    from distributed import Client
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    fix = "Check the host and port (a scheduler listens on 8786 by default; start one with `dask scheduler`)."
    try:
        scheme, loc = parse_address(str(address))
        host, port = parse_host_port(loc) if scheme != "inproc" else (loc, 0)
    except ValueError as e:
        raise ClusterError(
            f"address={address!r} is not a scheduler address ({e}); expected e.g. 'tcp://host:8786'."
        ) from None
    if scheme not in backends:
        raise ClusterError(
            f"address={address!r} has the scheme {scheme!r}; expected a Dask scheduler address such as "
            f"'tcp://host:8786' (schemes: {', '.join(sorted(backends))})."
        )
    if scheme in ("tcp", "tls"):
        try:  # a refused port or an unknown host fails now, not after distributed's 30 s of retries
            sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise ClusterError(f"no Dask scheduler answers at {address!r} ({why}). {fix}") from None
        # a plain-TCP scheduler speaks first (its handshake); a silent port would hang Client forever
        with sock:
            try:
                said = sock.recv(1) if scheme == "tcp" else b"-"
            except OSError:
                said = b""
        if not said:
            raise ClusterError(
                f"{address!r} accepts connections but sent no Dask handshake within {CONNECT_TIMEOUT} s: it is "
                f"not a Dask scheduler (another service on that port?). {fix}"
            )
    try:
        return Client(address)
    except OSError as e:
        raise ClusterError(f"cannot connect to the Dask scheduler at {address!r} ({e}). {fix}") from None
