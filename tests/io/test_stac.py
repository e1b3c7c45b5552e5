from __future__ import annotations

import json

import numpy as np
import pystac
import pytest

import geoarray
from geoarray.errors import STACError


@pytest.mark.parametrize("engine", ["odc", "stackstac"])
def test_from_stac_gives_a_cube_with_exact_pixels(stac_catalog, engine):
    ds = geoarray.from_stac(stac_catalog["path"], bands=["nir", "red"], engine=engine)
    geoarray.validate_cube(ds)
    assert ds.imagery.dims == ("time", "band", "y", "x")
    assert list(ds.band.values) == ["nir", "red"]
    assert ds.sizes["time"] == 3 and (ds.sizes["y"], ds.sizes["x"]) == stac_catalog["shape"]
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.imagery.dtype == np.uint16
    values = ds.imagery.values
    for t in range(3):
        np.testing.assert_array_equal(values[t, 0], stac_catalog["truth"][(t, "nir")])
        np.testing.assert_array_equal(values[t, 1], stac_catalog["truth"][(t, "red")])
    assert ds.x.values[0] == 600_010.0  # pixel centres


def test_both_engines_agree_on_grid_and_values(stac_catalog):
    a = geoarray.from_stac(stac_catalog["path"], bands=["red", "green"], engine="odc")
    b = geoarray.from_stac(stac_catalog["path"], bands=["red", "green"], engine="stackstac")
    np.testing.assert_array_equal(a.x.values, b.x.values)
    np.testing.assert_array_equal(a.y.values, b.y.values)
    np.testing.assert_array_equal(a.time.values, b.time.values)
    np.testing.assert_array_equal(a.imagery.values, b.imagery.values)
    assert a.rio.crs == b.rio.crs


@pytest.mark.parametrize("engine", ["odc", "stackstac"])
def test_from_stac_resamples_to_a_given_resolution(stac_catalog, engine):
    ds = geoarray.from_stac(stac_catalog["path"], bands=["red"], resolution=40.0, engine=engine)
    assert (ds.sizes["y"], ds.sizes["x"]) == (40, 48)


def test_from_stac_accepts_items_collections_paths_and_folders(stac_catalog, tmp_path):
    path = stac_catalog["path"]
    items = list(pystac.Catalog.from_file(str(path)).get_items(recursive=True))
    coll = pystac.ItemCollection(items)
    coll_path = tmp_path / "items.json"
    coll_path.write_text(json.dumps(coll.to_dict()))
    ref = geoarray.from_stac(items, bands=["red"]).imagery.values
    for source in (coll, coll_path, path.parent, items[0]):
        ds = geoarray.from_stac(source, bands=["red"])
        n = ds.sizes["time"]
        np.testing.assert_array_equal(ds.imagery.values, ref[:n])


def test_cube_from_stac_round_trips_through_zarr(stac_catalog, tmp_path):
    ds = geoarray.from_stac(stac_catalog["path"], bands=["red", "nir"])
    geoarray.write_cube(ds, tmp_path / "s.zarr")
    back = geoarray.open_cube(tmp_path / "s.zarr")
    np.testing.assert_array_equal(back.imagery.values, ds.imagery.values)


def test_empty_item_list():
    with pytest.raises(STACError, match="no STAC items"):
        geoarray.from_stac([], bands=["red"])


def test_item_lacking_a_band_names_item_and_assets(stac_catalog):
    with pytest.raises(
        STACError, match=r"'scene-0' lacks the requested band\(s\) \['swir'\].*\['green', 'nir', 'red'\]"
    ):
        geoarray.from_stac(stac_catalog["path"], bands=["red", "swir"])


def test_bad_engine_and_bad_path(stac_catalog, tmp_path):
    with pytest.raises(STACError, match="expected 'odc' or 'stackstac'"):
        geoarray.from_stac(stac_catalog["path"], bands=["red"], engine="gdal")
    with pytest.raises(STACError, match="no STAC file"):
        geoarray.from_stac(tmp_path / "nothing.json", bands=["red"])
