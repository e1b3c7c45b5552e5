"""predict's chunk writer (geoarray/_chunk_write.py) writes the bytes zarr's own ``z[region] = arr`` writes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec

from geoarray._block_write import write_block
from geoarray._chunk_write import chunk_writer

SHAPE, CHUNKS = (2, 3, 40, 40), (1, 3, 16, 16)  # 40 = 2 whole chunks + an edge chunk of 8


def _chunks():
    grid = [range(0, n, c) for n, c in zip(SHAPE, CHUNKS, strict=True)]
    for starts in itertools.product(*grid):
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, CHUNKS, SHAPE, strict=True))


def _data(dtype):
    rng = np.random.default_rng(3)
    a = (rng.random(SHAPE) * 5).astype(dtype)
    a[1, :, :16, :16] = np.nan if np.dtype(dtype).kind == "f" else 255  # a chunk equal to the fill value
    return a


def _create(path, dtype, compressors, **kw):
    fill = np.nan if np.dtype(dtype).kind == "f" else 255
    z = zarr.create_array(
        str(path), shape=SHAPE, chunks=CHUNKS, dtype=dtype, fill_value=fill, compressors=compressors, **kw
    )
    return z.with_config({"write_empty_chunks": True})


def _files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
@pytest.mark.parametrize(
    "compressors",
    [
        "auto",  # what predict's outputs get: zstd (level 0 = 3), no checksum
        [ZstdCodec(level=3, checksum=True)],
        [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), ZstdCodec(level=1)],
        "transpose",  # an array->array codec first: the next codecs see the spec it resolves
    ],
    ids=["default", "zstd-checksum", "blosc+zstd", "transpose+zstd"],
)
def test_whole_chunks_get_the_bytes_zarr_writes(tmp_path, dtype, compressors):
    data = _data(dtype)
    kw = {}
    if compressors == "transpose":
        compressors, kw = "auto", {"filters": [TransposeCodec(order=(0, 1, 3, 2))]}
    ref = _create(tmp_path / "ref.zarr", dtype, compressors, **kw)
    fast = _create(tmp_path / "fast.zarr", dtype, compressors, **kw)
    write = chunk_writer(fast)
    assert write is not None
    used = 0
    for region in _chunks():
        ref[region] = data[region]
        part = np.ascontiguousarray(data[region])
        before = _files(tmp_path / "fast.zarr")
        if write(region, part):
            used += 1
        else:  # the edge chunks: nothing written, the caller uses zarr's setitem
            assert part.shape != CHUNKS and _files(tmp_path / "fast.zarr") == before
            fast[region] = part
    assert used == 2 * 2 * 2  # times x whole y chunks x whole x chunks
    assert _files(tmp_path / "fast.zarr") == _files(tmp_path / "ref.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "fast.zarr"))[...], data)


def test_regions_that_are_not_one_whole_chunk_are_left_to_zarr(tmp_path):
    z = _create(tmp_path / "a.zarr", "uint8", "auto")
    write = chunk_writer(z)
    one = np.ones(CHUNKS, np.uint8)
    assert not write((slice(0, 1), slice(0, 3), slice(8, 24), slice(0, 16)), one)  # not on the chunk grid
    assert not write(
        (slice(0, 1), slice(0, 3), slice(0, 16), slice(0, 16)), one.astype(np.int16)
    )  # needs a cast
    assert not write((slice(0, 1), slice(0, 3), slice(0, 16)), one[..., 0])  # wrong number of dims
    assert not (tmp_path / "a.zarr" / "c").exists()
    assert write((slice(1, 2), slice(0, 3), slice(16, 32), slice(0, 16)), one)
    assert sorted(p.name for p in (tmp_path / "a.zarr").rglob("*") if p.is_file()) == ["0", "zarr.json"]
    assert (z[1, :, 16:32, :16] == 1).all() and (z[0] == 255).all()


def test_arrays_zarr_must_write_itself_get_no_writer(tmp_path):
    sharded = zarr.create_array(
        str(tmp_path / "s.zarr"), shape=SHAPE, chunks=CHUNKS, shards=(1, 3, 32, 32), dtype="uint8"
    ).with_config({"write_empty_chunks": True})
    assert chunk_writer(sharded) is None
    skips_empty = zarr.create_array(str(tmp_path / "e.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="uint8")
    assert chunk_writer(skips_empty) is None  # zarr deletes a chunk equal to the fill value there
    v2 = zarr.create_array(
        str(tmp_path / "v2.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="uint8", zarr_format=2
    )
    assert chunk_writer(v2.with_config({"write_empty_chunks": True})) is None


def test_write_block_writes_every_chunk_whole_and_once(tmp_path):
    """predict's write task: whole and edge chunks, a chunk equal to the fill value, no temporary file left."""
    data = _data("float16")
    _create(tmp_path / "ref.zarr", "float16", "auto")[...] = data
    _create(tmp_path / "out.zarr", "float16", "auto")
    path = str(tmp_path / "out.zarr")
    for region in _chunks():
        write_block((np.ascontiguousarray(data[region]),), [(path, "run-1", region)])
    assert _files(tmp_path / "out.zarr") == _files(tmp_path / "ref.zarr")
    assert len([k for k in _files(tmp_path / "out.zarr") if k.startswith("c/")]) == 2 * 3 * 3
