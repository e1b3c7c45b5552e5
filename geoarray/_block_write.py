"""The task that writes one block's outputs into their Zarr arrays, and the per-process cache of open arrays."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["count", "write_block"]


@functools.lru_cache(maxsize=64)  # open Zarr output arrays kept per process
def _opened(path: Any, token: str) -> tuple[Any, Any]:
    """The array at ``path`` (a local path or a :class:`~geoarray._storage.Location`), opened for writing, and
    its whole-chunk writer. ``token`` is the predict run's: a variable recreated by a later run is opened anew."""
    import zarr

    from geoarray._chunk_write import chunk_writer

    z = zarr.open_array(path, mode="r+") if isinstance(path, str) else path.open_array(mode="r+")
    # every chunk is written, also one that is all nodata (resume and completeness check by key);
    # open_array drops a config= argument silently (zarr 3.1), with_config applies it
    z = z.with_config({"write_empty_chunks": True})
    return z, chunk_writer(z)


def write_block(results: tuple[np.ndarray, ...], targets: list[tuple[Any, str, tuple[slice, ...]]]) -> int:
    """Write one block's outputs into their Zarr arrays (one chunk each: dask chunks == zarr chunks).

    ``targets`` holds ``(array, run token, region)`` per output (the array's local path, or a
    :class:`~geoarray._storage.Location` in object storage). A whole chunk of a local array goes through zarr's
    codecs and store in this thread (:mod:`geoarray._chunk_write`); the rest through ``z[region] = arr``.
    """
    for arr, (path, token, region) in zip(results, targets, strict=True):
        z, write = _opened(path, token)
        if write is None or not write(region, arr):
            z[region] = arr
    return 1


def count(*done: int) -> int:
    return int(sum(done))
