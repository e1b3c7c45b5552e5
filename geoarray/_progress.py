"""Progress reporting for dask computations: a tqdm bar in the threaded scheduler, dask's own on a cluster."""

from __future__ import annotations

from typing import Any

import dask
from dask.callbacks import Callback


class TqdmCallback(Callback):
    """A dask scheduler callback that advances a tqdm bar per finished task."""

    def __init__(self, desc: str = "", **tqdm_kwargs: Any) -> None:
        super().__init__()
        self._desc = desc
        self._kw = tqdm_kwargs
        self._bar: Any = None

    def _start_state(self, dsk: Any, state: Any) -> None:
        from tqdm.auto import tqdm

        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = tqdm(total=total, desc=self._desc, unit="task", **self._kw)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self._bar is not None:
            self._bar.close()


def _distributed_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute_with_progress(obj: Any, *, enabled: bool = False, desc: str = "") -> Any:
    """Compute a dask collection (or ``None``), optionally with a progress bar."""
    if obj is None:
        return None
    if not enabled:
        return dask.compute(obj)[0]
    client = _distributed_client()
    if client is not None:
        from distributed import progress

        fut = client.compute(obj)
        progress(fut)
        return fut.result()
    with TqdmCallback(desc=desc):
        return dask.compute(obj)[0]
