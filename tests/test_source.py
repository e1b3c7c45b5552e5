"""Direct Zarr reads (geoarray._source): a chunk that cannot be decoded is named, on both read paths."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import geoarray
from geoarray import _source
from geoarray.errors import StoreError


@pytest.fixture
def store(tmp_path) -> Path:
    """A real cube store with 32 px chunks: imagery chunk (t, 0, y, x) is the file imagery/c/t/0/y/x."""
    ds = geoarray.datasets.synthetic_cube(size=64, n_times=2, seed=1)
    path = tmp_path / "cube.zarr"
    geoarray.write_cube(ds, path, chunk=32)
    return path


DAMAGE = {
    "garbage": lambda b: np.random.default_rng(0).bytes(len(b)),
    "truncated": lambda b: b[: len(b) // 3],
    "emptied": lambda b: b"",
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_direct_read_names_the_damaged_chunk(store, damage):
    chunk = store / "imagery" / "c" / "1" / "0" / "1" / "0"
    good = _source.read(str(store), "imagery", (slice(0, 1), slice(None), slice(0, 64), slice(0, 64)))
    chunk.write_bytes(DAMAGE[damage](chunk.read_bytes()))
    with pytest.raises(StoreError) as err:
        _source.read(str(store), "imagery", (slice(0, 2), slice(None), slice(0, 64), slice(0, 64)))
    msg = str(err.value)
    assert "chunk (1, 0, 1, 0) of variable 'imagery'" in msg and f"Zarr store {str(store)!r}" in msg
    assert f"{store}/imagery/c/1/0/1/0 is damaged" in msg
    # the other chunks still read, and orthogonal (band list) reads name the chunk too
    again = _source.read(str(store), "imagery", (slice(0, 1), slice(None), slice(0, 64), slice(0, 64)))
    np.testing.assert_array_equal(again, good)
    with pytest.raises(StoreError, match=r"chunk \(1, 0, 1, 0\)"):
        _source.read(str(store), "imagery", (slice(1, 2), [0, 2], slice(32, 64), slice(0, 32)))


def test_xarray_and_dask_reads_name_the_chunk_when_opened_inside_naming_chunks(store):
    (store / "imagery" / "c" / "0" / "0" / "0" / "1").write_bytes(b"not zstd at all")
    with xr.open_zarr(store, consolidated=False) as plain:  # zarr's own message names nothing
        with pytest.raises(Exception, match="Zstd") as err:
            _ = plain.imagery.values
        assert not isinstance(err.value, StoreError)
    with _source.naming_chunks():
        ds = xr.open_zarr(store, consolidated=False)
    # dask pickles the opened arrays to worker processes; the naming survives that
    for d in (ds, pickle.loads(pickle.dumps(ds))):
        with pytest.raises(StoreError, match=r"chunk \(0, 0, 0, 1\) of variable 'imagery'"):
            _ = d.imagery.values
    ds.close()


def test_v2_store_chunk_is_named(tmp_path):
    z = zarr.create_array(
        tmp_path / "v2.zarr",
        name="imagery",
        shape=(2, 3, 8, 8),
        chunks=(1, 3, 8, 8),
        dtype="f4",
        zarr_format=2,
    )
    z[:] = 1.0
    (tmp_path / "v2.zarr" / "imagery" / "1.0.0.0").write_bytes(b"garbage")
    with pytest.raises(
        StoreError, match=r"chunk \(1, 0, 0, 0\) of variable 'imagery'.*imagery/1\.0\.0\.0 is damaged"
    ):
        _source.read(
            str(tmp_path / "v2.zarr"), "imagery", (slice(0, 2), slice(None), slice(0, 8), slice(0, 8))
        )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("imagery/c/1/0/2/3", ("imagery", (1, 0, 2, 3))),
        ("group/imagery/c.1.0", ("group/imagery", (1, 0))),
        ("imagery/1.0.0.0", ("imagery", (1, 0, 0, 0))),
        ("imagery/1/0", ("imagery", (1, 0))),
        ("scalar/c", ("scalar", ())),
        ("odd/key", ("odd", None)),
    ],
)
def test_chunk_keys(key, expected):
    assert _source.chunk_of(key) == expected
