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
        geoarray.write_cube(synth.isel(time=0), store)
    assert not store.exists()


@pytest.mark.parametrize(
    "order", [("time", "y", "x", "band"), ("band", "time", "y", "x"), ("x", "y", "band", "time")]
)
def test_cube_in_another_dim_order_is_accepted_and_stored_canonical(tmp_path, synth, order):
    moved = synth.assign(
        imagery=synth.imagery.transpose(*order), valid=synth.valid.transpose("y", "x", "time")
    )
    geoarray.validate_cube(moved)  # dims are checked by name
    conformed = geoarray.cube.conform_cube(moved)
    assert conformed.imagery.dims == ("time", "band", "y", "x") and conformed.valid.dims == ("time", "y", "x")
    xr.testing.assert_identical(conformed.imagery, synth.imagery)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(moved, store)
    ds = geoarray.open_cube(store)
    assert ds.imagery.dims == ("time", "band", "y", "x")
    np.testing.assert_array_equal(ds.imagery.values, synth.imagery.values)


def test_conform_cube_returns_a_canonical_cube_unchanged(synth):
    assert geoarray.cube.conform_cube(synth) is synth


def test_open_cube_transposes_a_store_written_in_another_order(tmp_path, synth):
    from geoarray._source import source_of

    store = tmp_path / "raw.zarr"
    raw = synth.assign(imagery=synth.imagery.transpose("time", "y", "x", "band"))
    raw.to_zarr(store, zarr_format=3, consolidated=False)
    ds = geoarray.open_cube(store)
    assert ds.imagery.dims == ("time", "band", "y", "x")
    np.testing.assert_array_equal(ds.imagery.values, synth.imagery.values)
    # the transposed view must not be read with the store's (other) layout by the direct-read fast path
    assert source_of(ds.imagery) is None and source_of(ds.labels) is not None


# -- validate_cube: each bad input gets a subclass and a message with the fix -----------------------------
@pytest.mark.parametrize(
    ("mutate", "exc", "pattern"),
    [
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
    with pytest.raises(StoreError, match=r"is a directory but not a Zarr store .*it holds \['file.txt'\]"):
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


# -- grids: one pixel size per axis (issue 8) -------------------------------------------------------------
def _mixed_resolution(synth):
    """10 m and 20 m bands concatenated with an outer join, as found on real rasters: x steps of 5/10 m."""
    fine = synth.imagery.isel(band=[0])
    coarse = synth.imagery.isel(band=[1], x=slice(None, None, 2)).assign_coords(band=["b20"])
    coarse = coarse.assign_coords(x=coarse.x + 5.0)
    img = xr.concat([fine, coarse], dim="band", join="outer")
    return img.to_dataset(name="imagery").rio.write_crs(synth.rio.crs)


def test_uneven_grid_is_refused_with_a_resampling_hint(tmp_path, synth):
    ds = _mixed_resolution(synth)
    with pytest.raises(
        DimensionError, match=r"'x' is not evenly spaced: its steps are 5, 10.*reproject_match"
    ):
        geoarray.validate_cube(ds)
    with pytest.raises(DimensionError, match="stack='band'"):
        geoarray.write_cube(ds, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()
    # not refused: a real transform's rounding noise (steps like 28.49999999927454), and float32 UTM
    # northings, which are only good to about half a metre
    noisy = synth.assign_coords(x=synth.x.values + np.random.default_rng(0).normal(0, 1e-7, synth.sizes["x"]))
    geoarray.validate_cube(noisy)
    f32 = synth.assign_coords(y=(5_000_000.0 - 10.3 * np.arange(synth.sizes["y"])).astype(np.float32))
    assert np.ptp(np.diff(f32.y.values)) > 0.1  # float32 rounding makes the steps differ
    geoarray.validate_cube(f32)


@pytest.mark.parametrize("dim", ["time", "band", "y", "x"])
def test_empty_cube_is_refused_and_not_written(tmp_path, synth, dim):
    empty = synth.isel({dim: slice(0, 0)})
    with pytest.raises(DimensionError, match=rf"no '{dim}' to hold imagery"):
        geoarray.validate_cube(empty)
    with pytest.raises(DimensionError):
        geoarray.write_cube(empty, tmp_path / "e.zarr")
    assert not (tmp_path / "e.zarr").exists()


# -- store paths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["w-", "w", "a"])
def test_write_onto_a_regular_file_says_it_is_a_file(tmp_path, synth, mode):
    target = tmp_path / "cube"
    target.write_text("not a store")
    with pytest.raises(StoreError, match="is a file, not a Zarr store") as info:
        geoarray.write_cube(synth, target, mode=mode)
    assert isinstance(info.value, StoreExistsError) == (mode != "a")
    assert target.read_text() == "not a store"


def test_overwrite_never_deletes_a_directory_that_is_not_a_store(tmp_path, synth):
    home = tmp_path / "project"
    home.mkdir()
    (home / "notes.txt").write_text("precious")
    with pytest.raises(
        StoreExistsError, match=r"not a Zarr store \(it holds \['notes.txt'\]\).*nothing was deleted"
    ):
        geoarray.write_cube(synth, home, mode="w")
    assert (home / "notes.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    geoarray.write_cube(synth, empty, mode="w")  # an empty directory is fine to fill
    assert geoarray.open_cube(empty).sizes["time"] == synth.sizes["time"]


def test_append_to_a_store_without_imagery_is_refused(tmp_path, synth):
    store = tmp_path / "other.zarr"
    xr.Dataset({"a": (("r", "c"), np.zeros((3, 3)))}).to_zarr(store, zarr_format=3, consolidated=False)
    before = tree_digest(store)
    with pytest.raises(StoreError, match=r"has no imagery variable 'imagery' \(it has \['a'\]\)"):
        geoarray.write_cube(synth[["valid"]], store, mode="a")
    assert tree_digest(store) == before


def test_open_cube_on_a_geotiff_or_an_empty_folder(tmp_path):
    tif = tmp_path / "scene.tif"
    tif.write_bytes(b"II*\x00")
    with pytest.raises(StoreError, match=r"is a file, not a Zarr store.*from_geotiff"):
        geoarray.open_cube(tif)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"not a Zarr store.*it is empty"):
        geoarray.open_cube(tmp_path / "empty")


def test_open_cube_on_a_variable_folder_says_it_is_an_array(tmp_path, synth):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synth, store)
    with pytest.raises(StoreError, match="single Zarr array, not a group"):
        geoarray.open_cube(store / "imagery")


@pytest.mark.parametrize("chunk", [0, -5, 2.5, True, "512"])
def test_write_cube_refuses_a_bad_chunk_before_writing(tmp_path, synth, chunk):
    with pytest.raises(CubeError, match=rf"chunk={chunk!r}; expected a whole number of pixels >= 1"):
        geoarray.write_cube(synth, tmp_path / "c.zarr", chunk=chunk)
    assert not (tmp_path / "c.zarr").exists()
