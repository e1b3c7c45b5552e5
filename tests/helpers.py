"""Test helpers that are not fixtures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask


class CountingScheduler:
    """A dask scheduler that counts computes and fails past ``max_computes`` (xarray's raise_if_dask_computes)."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"too many dask computes: {self.total} > {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    sched = CountingScheduler(max_computes)
    with dask.config.set(scheduler=sched):
        yield sched
