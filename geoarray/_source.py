"""Direct Zarr reads for variables that are the untouched lazy view of a store.

``open_cube`` tags every dask-backed variable with its store path and the name of its dask array. When a
variable still carries that exact dask array (no arithmetic, selection or rechunking since it was opened),
its values are the store's values, and hot paths (the chip stream, predict's block kernel) read windows with
zarr-python directly: one call per window instead of a dask graph per read, about 7x less overhead per chunk.
Anything else falls back to dask.

Arrays opened here (and inside :func:`naming_chunks`) decode through :class:`NamingPipeline`, which turns a
chunk that cannot be read (a damaged file, a codec error) into a :class:`~geoarray.errors.StoreError` that names
the store, the variable, the chunk index and its file. zarr's own message names none of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from geoarray.errors import StoreError

KEY = "geoarray_source"
_LOCAL = threading.local()
_CONFIG_LOCK = threading.Lock()
# Chunks decoded per batch of zarr's codec pipeline (zarr's default is 1): a window over many small chunks
# reads ~1.6x faster with 16-64, and large chunks are unaffected (measured: benchmarks/bench_overhead.py).
BATCH = 32


def tag(ds: Any, store: Any) -> None:
    """Record, on each dask-backed variable of a freshly opened store, where its values live.

    ``store`` is a local path (str) or a :class:`~geoarray._storage.Location` (a URL with its options).
    """
    for name, da in ds.data_vars.items():
        if hasattr(da.data, "dask"):
            da.encoding[KEY] = (store if not isinstance(store, str) else str(store), str(name), da.data.name)


def source_of(da: Any) -> tuple[Any, str] | None:
    """``(store, variable)`` when ``da`` is still exactly what was read from the store, else None."""
    enc = getattr(da, "encoding", {}).get(KEY)
    if not enc or not hasattr(da.data, "dask") or da.data.name != enc[2]:
        return None
    return enc[0], enc[1]


def read(store: Any, var: str, index: tuple[Any, ...]) -> np.ndarray:
    """``array[index]`` read with zarr (orthogonal indexing), with the open array cached per thread.

    ``store`` is a local path or a :class:`~geoarray._storage.Location` (read through zarr's FsspecStore).
    """
    import zarr

    cache = getattr(_LOCAL, "arrays", None)
    if cache is None:
        cache = _LOCAL.arrays = {}
    key = (store, var)
    z = cache.get(key)
    if z is None:
        with naming_chunks({"codec_pipeline.batch_size": BATCH}):
            if isinstance(store, str):
                z = cache[key] = zarr.open_array(store, path=var, mode="r")
            else:
                z = cache[key] = store.open_array(var, mode="r")
    index = tuple(_as_slice(i) for i in index)
    if all(isinstance(i, slice) for i in index):
        return np.asarray(z[index])
    return np.asarray(z.oindex[index])


def _as_slice(i: Any) -> Any:
    """A list of consecutive indices (all bands, a run of dates) as a slice: zarr's basic indexing is ~1.6x
    faster than its orthogonal (fancy) indexing for the same chunks."""
    if isinstance(i, (list, tuple)) and i and all(isinstance(v, (int, np.integer)) for v in i):
        first = int(i[0])
        if list(i) == list(range(first, first + len(i))) and first >= 0:
            return slice(first, first + len(i))
    return i


@contextmanager
def naming_chunks(options: dict[str, Any] | None = None) -> Iterator[None]:
    """Zarr arrays opened inside (directly, or by ``xr.open_zarr``) name a chunk they cannot decode.

    The pipeline class is bound when an array is opened and travels with it when dask pickles it to workers;
    zarr's config is global, so the lock keeps geoarray's threads from interleaving their settings.
    """
    import zarr

    settings = dict(options or {})
    if _pipeline_class() is not None:
        settings["codec_pipeline.path"] = f"{__name__}.NamingPipeline"
    with _CONFIG_LOCK, zarr.config.set(settings):
        yield


def chunk_of(key: str) -> tuple[str, tuple[int, ...] | None]:
    """Split a chunk's store key into (array path, chunk index); v3 ``c/1/0`` or ``c.1.0`` keys, v2 ``1.0``."""
    parts = key.split("/")
    i = len(parts)
    while i > 0 and parts[i - 1].isdigit():
        i -= 1
    if i < len(parts):  # "/"-separated coordinates
        coords = parts[i:]
        if i > 0 and parts[i - 1] == "c":
            i -= 1
        return "/".join(parts[:i]), tuple(int(c) for c in coords)
    dotted = parts[-1].split(".")
    if dotted[0] == "c":
        dotted = dotted[1:]
    if all(d.isdigit() for d in dotted):
        return "/".join(parts[:-1]), tuple(int(d) for d in dotted)
    return "/".join(parts[:-1]), None


def _chunk_error(byte_getter: Any, err: BaseException) -> StoreError:
    store = byte_getter.store
    root = str(getattr(store, "root", "") or getattr(store, "path", "") or store).rstrip("/")
    path = str(byte_getter.path)
    var, index = chunk_of(path)
    where = f"chunk {index}" if index is not None else f"chunk {path!r}"
    return StoreError(
        f"cannot read {where} of variable {var!r} in the Zarr store {root!r} "
        f"({type(err).__name__}: {err}); expected a chunk its codecs can decode. The chunk's file "
        f"{root}/{path} is damaged (truncated or overwritten): restore the store from a copy, or rewrite "
        f"{var!r} (e.g. `geoarray.write_cube(ds, store, mode='w')` from the source data)."
    )


_PIPELINE: list[Any] = []


def _pipeline_class() -> Any:
    """zarr's BatchedCodecPipeline plus chunk names in read errors (None if this zarr lacks the hook)."""
    if not _PIPELINE:
        try:
            from zarr.core.codec_pipeline import BatchedCodecPipeline
            from zarr.registry import register_pipeline
        except ImportError:  # another zarr layout: reads still work, with zarr's own messages
            _PIPELINE.append(None)
            return None

        class NamingPipeline(BatchedCodecPipeline):
            async def read_batch(self, batch_info: Any, out: Any, drop_axes: tuple[int, ...] = ()) -> None:
                batch_info = list(batch_info)
                try:
                    await super().read_batch(batch_info, out, drop_axes)
                except (StoreError, MemoryError):
                    raise
                except Exception as e:
                    # Error path only: read the batch's chunks one by one to find the one that fails.
                    for item in batch_info:
                        if not hasattr(item[0], "path"):  # a shard's inner chunk: the outer read names it
                            raise
                        try:
                            await super().read_batch([item], out, drop_axes)
                        except Exception as one:
                            raise _chunk_error(item[0], one) from e
                    raise

        NamingPipeline.__module__ = __name__
        NamingPipeline.__qualname__ = "NamingPipeline"
        register_pipeline(NamingPipeline)
        _PIPELINE.append(NamingPipeline)
    return _PIPELINE[0]


def __getattr__(name: str) -> Any:
    # Built on first use, so importing this module does not import zarr; found by name when dask unpickles
    # an array on a worker.
    if name == "NamingPipeline" and _pipeline_class() is not None:
        return _pipeline_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
