from __future__ import annotations

import json

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tree_digest
from helpers import raise_if_dask_computes

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import (
    BandError,
    CRSError,
    CubeError,
    DimensionError,
    GeoArrayError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
    TimeError,
)


def test_round_trip_keeps_values_coords_and_crs(tmp_path, synth):
    store = tmp_path / "c.zarr"
    written = geoarray.write_cube(synth, store)
    assert written == ["imagery", "labels", "valid"]
    ds = geoarray.open_cube(store)
    assert ds.imagery.dims == ("time", "band", "y", "x")
    assert ds.rio.crs == synth.rio.crs
    assert list(ds.band.values) == list(synth.band.values)
    np.testing.assert_array_equal(ds.time.values, synth.time.values)
    np.testing.assert_array_equal(ds.imagery.values, synth.imagery.values)  # NaNs included
    np.testing.assert_array_equal(ds.labels.values, synth.labels.values)
    assert list(ds.labels.attrs["classes"]) == list(synth.labels.attrs["classes"])
    assert ds.rio.transform() == synth.rio.transform()


def test_default_storage_is_zarr_v3_with_time1_allbands_512(tmp_path):
    shape = (2, 3, 1100, 700)
    img = dask.array.zeros(shape, chunks=(2, 1, 300, 300), dtype="float32")
    ds = xr.Dataset(
        {"imagery": (("time", "band", "y", "x"), img)},
        coords={
            "time": pd.date_range("2020-01-01", periods=2),
            "band": np.array(["a", "b", "c"], dtype=object),
            "y": np.arange(1100)[::-1] * 10.0,
            "x": np.arange(700) * 10.0,
        },
    ).rio.write_crs("EPSG:32633")
    store = tmp_path / "big.zarr"
    geoarray.write_cube(ds, store)
    meta = json.loads((store / "imagery" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 3, 512, 512]
    opened = geoarray.open_cube(store)
    assert opened.imagery.chunks[2][0] == 512 and opened.imagery.chunks[0] == (1, 1)


def test_open_cube_is_lazy(tmp_path, synth):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synth, store)
    with raise_if_dask_computes():
        ds = geoarray.open_cube(store)
    assert isinstance(ds.imagery.data, dask.array.Array)


def test_append_adds_only_new_variables_and_never_touches_existing_bytes(tmp_path, synth):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synth, store)
    before = tree_digest(store)
    ds = geoarray.open_cube(store)
    out = ds[["labels"]].copy()
    out["mask"] = (ds.labels == 1).astype("uint8")
    out["labels"] = out.labels * 0  # already in the store: must be skipped, not rewritten
    written = geoarray.write_cube(out, store, mode="a")
    assert written == ["mask"]
    after = tree_digest(store, exclude=("mask",))
    assert after == before
    reopened = geoarray.open_cube(store)
    np.testing.assert_array_equal(reopened["mask"].values, (synth.labels.values == 1).astype("uint8"))
    assert reopened["mask"].rio.crs == synth.rio.crs
    assert geoarray.write_cube(out, store, mode="a") == []


def test_append_on_another_grid_is_refused_and_store_unchanged(tmp_path, synth):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synth, store)
    before = tree_digest(store)
    wrong = synth.isel(y=slice(0, 50))[["valid"]].rename(valid="other")
    with pytest.raises(StoreError, match=r"'y' has 50 steps but the store has 96"):
        geoarray.write_cube(wrong, store, mode="a")
    assert tree_digest(store) == before


def test_write_refuses_existing_store_in_default_mode(tmp_path, synth):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synth, store)
    before = tree_digest(store)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        geoarray.write_cube(synth, store)
    assert tree_digest(store) == before
    geoarray.write_cube(synth.isel(time=[0]), store, mode="w")
    assert geoarray.open_cube(store).sizes["time"] == 1


def test_invalid_cube_is_not_written(tmp_path, synth):
    store = tmp_path / "bad.zarr"
    with pytest.raises(DimensionError):
        geoarray.write_cube(synth.transpose("time", "y", "x", "band"), store)
    assert not store.exists()


# -- validate_cube: each bad input gets a subclass and a message with the fix -----------------------------
@pytest.mark.parametrize(
    ("mutate", "exc", "pattern"),
    [
        (
            lambda d: d.transpose("time", "y", "x", "band"),
            DimensionError,
            r"transpose\('time', 'band', 'y', 'x'",
        ),
        (lambda d: d.isel(time=0), DimensionError, r"missing \('time',\).*expand_dims"),
        (lambda d: d.drop_vars("band"), BandError, "no coordinate.*assign_coords"),
        (lambda d: d.drop_vars("time"), TimeError, "no coordinate"),
        (lambda d: d.drop_vars("spatial_ref"), CRSError, "write_crs"),
        (lambda d: d.assign_coords(band=["a", "a", "b", "c"]), BandError, r"duplicate band names \['a'\]"),
        (lambda d: d.assign_coords(band=[1, 2, 3, 4]), BandError, "expected str names"),
        (lambda d: d.isel(time=[1, 0, 2]), TimeError, "non-monotonic.*sortby"),
        (lambda d: d.assign_coords(time=pd.DatetimeIndex(["2020-01-01"] * 3)), TimeError, "duplicate"),
        (lambda d: d.assign_coords(time=[1, 2, 3]), TimeError, "expected datetime64"),
        (lambda d: d.rename(imagery="img"), CubeError, r"no imagery variable 'imagery'.*\['img'"),
        (lambda d: d.assign(valid=d.valid.astype("uint8")), CubeError, "expected bool"),
        (lambda d: d.assign(labels=d.labels.astype("float32")), CubeError, "expected integer"),
    ],
)
def test_validate_cube_errors(synth, mutate, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        geoarray.validate_cube(mutate(synth))
    assert isinstance(info.value, GeoArrayError) and isinstance(info.value, ValueError)


def test_validate_rejects_non_dataset(synth):
    with pytest.raises(CubeError, match="to_dataset"):
        geoarray.validate_cube(synth.imagery)


def test_open_missing_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no Zarr store") as info:
        geoarray.open_cube(tmp_path / "nope.zarr")
    assert isinstance(info.value, FileNotFoundError)


def test_open_directory_that_is_not_zarr(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a readable Zarr store"):
        geoarray.open_cube(tmp_path / "x")


def test_open_store_that_is_not_a_cube(tmp_path):
    xr.Dataset({"a": (("r", "c"), np.zeros((3, 3)))}).to_zarr(
        tmp_path / "other.zarr", zarr_format=3, consolidated=False
    )
    with pytest.raises(StoreError, match="not a geoarray cube: no imagery variable"):
        geoarray.open_cube(tmp_path / "other.zarr")


def test_synthetic_cube_chunks_option():
    ds = synthetic_cube(size=64, chunks=32)
    assert ds.imagery.chunks[2] == (32, 32)


def test_append_keeps_group_attributes(tmp_path, synth):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synth, store)
    extra = xr.Dataset({"flag": synth.valid.astype("uint8")})  # no attrs of its own
    geoarray.write_cube(extra, store, mode="a")
    assert geoarray.open_cube(store).attrs["title"] == "geoarray synthetic cube"
