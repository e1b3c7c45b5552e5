"""Write one whole chunk through zarr's own codecs and store, in the calling thread.

``z[region] = arr`` in zarr-python 3.1 hops from the calling (dask) thread to zarr's single event-loop thread,
from there to ``asyncio.to_thread`` for the codec and again for the store's file write, and back. For predict's
chunks (one dask task per chunk, outputs already in memory) those hops and the asyncio bookkeeping cost about as
much as encoding a 512² uint8 mask, and they do not overlap across dask threads (benchmarks/bench_write.py).

For a region that is exactly one whole chunk of a v3 array whose codecs all have zarr's synchronous encode
(``zarr.abc.codec.SupportsSyncCodec``) and whose store has zarr's synchronous set (``zarr.abc.store.SupportsSetSync``:
``LocalStore``, ``MemoryStore``), :func:`chunk_writer` makes the calls zarr's ``BatchedCodecPipeline`` makes for
that chunk, in the caller's thread: the array's own codecs in order (array→array, array→bytes, bytes→bytes, each
given the chunk spec the previous one resolves), then the store's own ``set_sync`` under the chunk key from the
array's metadata (``LocalStore``: ``<chunk>.<uuid>.partial`` then rename, so a chunk is on disk whole or not at
all). The bytes are the ones ``z[region] = arr`` writes (tests compare them). Anything else (a chunk at the array's
edge, sharding, object storage, zarr v2, a dtype that needs a cast, another codec pipeline, an array that skips
empty chunks) gets ``None`` here and the caller keeps ``z[region] = arr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

__all__ = ["chunk_writer"]

ChunkWriter = Callable[[tuple[slice, ...], np.ndarray], bool]


def chunk_writer(z: Any) -> ChunkWriter | None:
    """A function ``write(region, arr) -> bool`` that writes ``arr`` if ``region`` is one whole chunk of ``z``
    (returns False, writing nothing, otherwise), or None when ``z`` cannot be written this way at all."""
    try:
        from zarr.abc.codec import SupportsSyncCodec
        from zarr.abc.store import SupportsSetSync
        from zarr.buffer import default_buffer_prototype
        from zarr.core.codec_pipeline import BatchedCodecPipeline

        a = z.async_array
        meta, pipe, config = a.metadata, a.codec_pipeline, a.config
        if meta.zarr_format != 3 or not isinstance(pipe, BatchedCodecPipeline):
            return None
        if not config.write_empty_chunks:  # zarr would delete a chunk equal to the fill value
            return None
        if not isinstance(a.store_path.store, SupportsSetSync):
            return None
        codecs: tuple[Any, ...] = (*pipe.array_array_codecs, pipe.array_bytes_codec, *pipe.bytes_bytes_codecs)
        if not all(isinstance(c, SupportsSyncCodec) for c in codecs):
            return None
        chunks = tuple(int(c) for c in z.chunks)
        shape = tuple(int(s) for s in z.shape)
        prototype = default_buffer_prototype()
        spec = meta.get_chunk_spec((0,) * len(shape), config, prototype)
        dtype = spec.dtype.to_native_dtype()
        if tuple(spec.shape) != chunks:
            return None
    except (AttributeError, ImportError, AssertionError, TypeError):  # another zarr version or layout
        return None

    def write(region: tuple[slice, ...], arr: np.ndarray) -> bool:
        if (
            not isinstance(arr, np.ndarray)
            or arr.dtype != dtype
            or arr.shape != chunks
            or len(region) != len(chunks)
        ):
            return False
        coords = []
        for s, c, n in zip(region, chunks, shape, strict=True):
            if (
                s.step not in (None, 1)
                or s.start is None
                or s.start % c
                or s.stop != s.start + c
                or s.stop > n
            ):
                return False
            coords.append(s.start // c)
        key = tuple(coords)
        chunk_spec = meta.get_chunk_spec(key, config, prototype)
        data: Any = prototype.nd_buffer.from_ndarray_like(cast(Any, arr))  # what zarr's setitem makes
        for codec in codecs:  # the pipeline's order; each codec sees the spec the previous one resolved
            data = codec._encode_sync(data, chunk_spec)
            chunk_spec = codec.resolve_metadata(chunk_spec)
        if data is None:  # a codec that drops the chunk: zarr's pipeline would delete the key instead
            return False
        (a.store_path / meta.encode_chunk_key(key)).set_sync(data)
        return True

    return write
