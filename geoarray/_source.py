"""Direct Zarr reads for variables that are the untouched lazy view of a store.

``open_cube`` tags every dask-backed variable with its store path and the name of its dask array. When a
variable still carries that exact dask array (no arithmetic, selection or rechunking since it was opened),
its values are the store's values, and hot paths (the chip stream, predict's block kernel) read windows with
zarr-python directly: one call per window instead of a dask graph per read, about 7x less overhead per chunk.
Anything else falls back to dask.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

KEY = "geoarray_source"
_LOCAL = threading.local()
_CONFIG_LOCK = threading.Lock()
# Chunks decoded per batch of zarr's codec pipeline (zarr's default is 1): a window over many small chunks
# reads ~1.6x faster with 16-64, and large chunks are unaffected (measured: benchmarks/bench_overhead.py).
BATCH = 32


def tag(ds: Any, store: str) -> None:
    """Record, on each dask-backed variable of a freshly opened store, where its values live."""
    for name, da in ds.data_vars.items():
        if hasattr(da.data, "dask"):
            da.encoding[KEY] = (str(store), str(name), da.data.name)


def source_of(da: Any) -> tuple[str, str] | None:
    """``(store, variable)`` when ``da`` is still exactly what was read from the store, else None."""
    enc = getattr(da, "encoding", {}).get(KEY)
    if not enc or not hasattr(da.data, "dask") or da.data.name != enc[2]:
        return None
    return enc[0], enc[1]


def read(store: str, var: str, index: tuple[Any, ...]) -> np.ndarray:
    """``array[index]`` read with zarr (orthogonal indexing), with the open array cached per thread."""
    import zarr

    cache = getattr(_LOCAL, "arrays", None)
    if cache is None:
        cache = _LOCAL.arrays = {}
    key = (store, var)
    z = cache.get(key)
    if z is None:
        with _CONFIG_LOCK, zarr.config.set({"codec_pipeline.batch_size": BATCH}):
            z = cache[key] = zarr.open_array(f"{store}/{var}", mode="r")
    if all(isinstance(i, slice) for i in index):
        return np.asarray(z[index])
    return np.asarray(z.oindex[index])
