from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
from affine import Affine
from conftest import CRS, write_tif
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from stac_items import LANDSAT, LIDAR, S2, USGS, localize

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


# -- real items (tests/data/stac, from odc-stac's test data) on local COGs: issue 8 ------------------------
def _both(items, **kw):
    a = geoarray.from_stac(items, engine="odc", **kw)
    b = geoarray.from_stac(items, engine="stackstac", **kw)
    np.testing.assert_array_equal(a.x.values, b.x.values)
    np.testing.assert_array_equal(a.y.values, b.y.values)
    np.testing.assert_array_equal(a.time.values, b.time.values)
    assert a.imagery.dtype == b.imagery.dtype
    np.testing.assert_array_equal(a.imagery.values, b.imagery.values)  # NaN == NaN here
    assert a.rio.crs == b.rio.crs
    return a


@pytest.mark.parametrize("raster_bands", [False, True], ids=["no-raster-bands", "raster-bands"])
@pytest.mark.parametrize("proj_code", [False, True], ids=["proj-epsg", "proj-code"])
def test_engines_agree_on_a_real_landsat_item(tmp_path, proj_code, raster_bands):
    """stackstac failed on items without raster:bands (fill value), and its grid was one pixel larger and
    half a pixel off odc-stac's. Both now give the item's own grid and the file's pixels."""
    d, truth = localize(LANDSAT, tmp_path, ["red", "nir08"], proj_code=proj_code, raster_bands=raster_bands)
    ds = _both([pystac.Item.from_dict(d)], bands=["nir08", "red"])
    assert (ds.sizes["y"], ds.sizes["x"]) == (40, 50)
    x0, y0 = d["properties"]["proj:transform"][2], d["properties"]["proj:transform"][5]
    np.testing.assert_array_equal(ds.x.values, x0 + 15 + 30 * np.arange(50))  # pixel centres
    np.testing.assert_array_equal(ds.y.values, y0 - 15 - 30 * np.arange(40))
    assert ds.rio.crs.to_epsg() == 32615
    got = ds.imagery.values[0]
    if raster_bands:  # the assets' own dtype; nodata stays 0
        assert ds.imagery.dtype == np.uint16
        np.testing.assert_array_equal(got, np.stack([truth["nir08"], truth["red"]]))
    else:  # float32, nodata becomes NaN
        assert ds.imagery.dtype == np.float32
        want = np.stack([truth["nir08"], truth["red"]]).astype(np.float32)
        want[want == 0] = np.nan
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("raster_bands", [False, True], ids=["no-raster-bands", "raster-bands"])
def test_engines_agree_on_shifted_items_and_a_shared_date(tmp_path, raster_bands):
    """Union grid of items with different extents; two items at one datetime are mosaicked (smaller id on top)."""
    docs, truths = [], []
    for n, (dx, dy, when) in enumerate(
        [(0, 0, None), (300, -600, "2020-02-14T17:05:46Z"), (900, 0, None)]  # "c" shares "a"'s datetime
    ):
        d, t = localize(
            LANDSAT, tmp_path, ["red"], item_id="abc"[n], seed=n, datetime=when, raster_bands=raster_bands
        )
        tr = d["properties"]["proj:transform"]
        tr[2] += dx
        tr[5] += dy
        write_tif(
            Path(d["assets"]["red"]["href"]), t["red"], crs="EPSG:32615", transform=Affine(*tr[:6]), nodata=0
        )
        docs.append(d)
        truths.append(t["red"])
    items = [pystac.Item.from_dict(d) for d in reversed(docs)]
    ds = _both(items, bands=["red"])
    assert ds.sizes["time"] == 2 and (ds.sizes["y"], ds.sizes["x"]) == (60, 80)
    first = ds.imagery.values[0, 0]
    fill = 0 if raster_bands else np.nan
    a, c = truths[0].astype(first.dtype), truths[2].astype(first.dtype)
    if not raster_bands:
        a[a == 0], c[c == 0] = np.nan, np.nan
    np.testing.assert_array_equal(first[:40, :50], a)  # "a" wins where it overlaps "c"
    np.testing.assert_array_equal(first[:40, 50:80], c[:, 20:])
    np.testing.assert_array_equal(first[40:], np.full((20, 80), fill, first.dtype))


def test_usgs_item_with_band_indices_in_eo_bands(tmp_path):
    """`"eo:bands": [3]` (indices into the item's eo:bands) gave AttributeError: 'int' object has no attribute 'get'."""
    d, truth = localize(USGS, tmp_path, ["SR_B4.TIF", "SR_B5.TIF"], shape=None)
    items = [pystac.Item.from_dict(d)]
    ds = _both(items, bands=["red", "SR_B5", "SR_B4.TIF"][:2])  # common name and eo name, via the index
    assert list(ds.band.values) == ["red", "SR_B5"]
    want = np.stack([truth["SR_B4.TIF"], truth["SR_B5.TIF"]]).astype(np.float32)
    want[want == 0] = np.nan
    np.testing.assert_array_equal(ds.imagery.values[0], want)
    np.testing.assert_array_equal(geoarray.from_stac(items, bands=["SR_B4.TIF"]).imagery.values[0], want[:1])


def test_absolute_local_hrefs_stay_local_under_a_remote_self_link(tmp_path):
    """pystac joined '/data/red.tif' onto the item's remote self link (http://host/data/red.tif)."""
    d, truth = localize(LANDSAT, tmp_path, ["red"], raster_bands=True)
    d["links"] = [{"rel": "self", "href": "http://127.0.0.1:9/stac/collections/landsat/items/x"}]
    item = pystac.Item.from_dict(d)
    assert item.assets["red"].get_absolute_href().startswith("http://127.0.0.1:9/")  # what went wrong
    ds = _both([item], bands=["red"])
    np.testing.assert_array_equal(ds.imagery.values[0, 0], truth["red"])


def test_item_without_datetime_takes_its_start_datetime(tmp_path):
    """lidar_dem.json: "datetime": null with start/end_datetime. stackstac gave NaT."""
    d, _ = localize(LIDAR, tmp_path, ["dem"])
    ds = _both([pystac.Item.from_dict(d)], bands=["dem"])
    assert ds.time.values[0] == np.datetime64("2012-01-01T00:00:00", "ns")


def test_search_result_saved_to_disk_and_a_json_list(tmp_path):
    d, truth = localize(LANDSAT, tmp_path, ["red"], raster_bands=True)
    page = {  # what a STAC API /search returns, saved as is
        "type": "FeatureCollection",
        "features": [d],
        "links": [{"rel": "next", "href": "http://127.0.0.1:9/search?token=2", "method": "GET"}],
        "numberMatched": 1,
        "numberReturned": 1,
        "context": {"returned": 1, "limit": 10, "matched": 1},
    }
    (tmp_path / "search.json").write_text(json.dumps(page))
    (tmp_path / "list.json").write_text(json.dumps([d]))
    for source in (tmp_path / "search.json", tmp_path / "list.json", page, d, [d]):
        ds = geoarray.from_stac(source, bands=["red"])
        np.testing.assert_array_equal(ds.imagery.values[0, 0], truth["red"])


def test_bands_of_a_multiband_asset_by_number(tmp_path):
    """S2 "visual" has 3 eo:bands and no raster:bands: odc-stac silently loaded band 1 only."""
    d, truth = localize(S2, tmp_path, ["visual", "B04"], counts={"visual": 3})
    items = [pystac.Item.from_dict(d)]
    ds = geoarray.from_stac(items, bands=["visual.3", "visual.1", "B04"])
    want = np.stack([truth["visual"][2], truth["visual"][0], truth["B04"]]).astype(np.float32)
    want[want == 0] = np.nan
    np.testing.assert_array_equal(ds.imagery.values[0], want)
    red = geoarray.from_stac(items, bands=["red"])  # the 1-band asset wins over visual's band 1
    np.testing.assert_array_equal(red.imagery.values[0], want[2:])


def test_a_multiband_file_without_band_metadata_by_number(tmp_path):
    d, truth = localize(LANDSAT, tmp_path, ["qa_pixel"], counts={"qa_pixel": 3}, raster_bands=False)
    ds = geoarray.from_stac([pystac.Item.from_dict(d)], bands=["qa_pixel.2"])
    want = truth["qa_pixel"][1].astype(np.float32)
    want[want == 0] = np.nan
    np.testing.assert_array_equal(ds.imagery.values[0, 0], want)


def test_items_in_two_crss_load_with_crs(tmp_path):
    a, _ = localize(LANDSAT, tmp_path / "a", ["red"], item_id="a")
    b, tb = localize(LANDSAT, tmp_path / "b", ["red"], item_id="b", datetime="2020-02-14T17:05:46Z")
    b["properties"]["proj:epsg"] = 32614  # the neighbouring zone: its file too
    b["properties"]["proj:transform"][2] = 675_000.0
    write_tif(
        Path(b["assets"]["red"]["href"]),
        tb["red"],
        crs="EPSG:32614",
        transform=Affine(*b["properties"]["proj:transform"][:6]),
        nodata=0,
    )
    items = [pystac.Item.from_dict(a), pystac.Item.from_dict(b)]
    with pytest.raises(STACError, match="2 CRSs"):
        geoarray.from_stac(items, bands=["red"])
    ds = geoarray.from_stac(items, bands=["red"], crs="EPSG:32615", resolution=30.0)
    assert ds.rio.crs.to_epsg() == 32615 and ds.sizes["time"] == 2
    assert np.isfinite(ds.imagery.values[1]).any()


def test_bbox_clips_and_drops_items_outside_it(tmp_path):
    a, ta = localize(LANDSAT, tmp_path, ["red"], item_id="a", raster_bands=True)
    b, _ = localize(
        LANDSAT, tmp_path, ["red"], item_id="b", datetime="2020-02-14T17:05:46Z", raster_bands=True
    )
    b["properties"]["proj:transform"][2] += 30_000  # 30 km east, same file grid shifted
    write_tif(
        Path(b["assets"]["red"]["href"]),
        np.ones((40, 50), np.uint16),
        crs="EPSG:32615",
        transform=Affine(*b["properties"]["proj:transform"][:6]),
        nodata=0,
    )
    items = [pystac.Item.from_dict(a), pystac.Item.from_dict(b)]
    from rasterio.warp import transform_bounds

    x0, y0 = 173_085.0, 4_904_715.0  # the item's grid origin
    bbox = transform_bounds("EPSG:32615", "EPSG:4326", x0 + 300, y0 - 900, x0 + 900, y0 - 300)
    ds = _both(items, bands=["red"], bbox=bbox)
    assert ds.sizes["time"] == 1  # "b" lies outside the bbox: no all-empty time step
    ix = ((ds.x.values - x0 - 15) / 30).astype(int)
    iy = ((y0 - 15 - ds.y.values) / 30).astype(int)
    assert 0 < ix[0] < ix[-1] < 50 and 0 < iy[0] < iy[-1] < 40  # inside the data
    np.testing.assert_array_equal(ds.imagery.values[0, 0], ta["red"][np.ix_(iy, ix)])


def test_a_file_that_goes_away_after_loading_is_named_at_compute_time(tmp_path):
    d, _ = localize(LANDSAT, tmp_path, ["red"], raster_bands=True)
    ds = geoarray.from_stac([pystac.Item.from_dict(d)], bands=["red"])
    Path(d["assets"]["red"]["href"]).unlink()
    with pytest.raises(STACError, match=r"reading '.*_red.tif' \(band 1\) failed"):
        ds.imagery.compute()


def test_a_datetime_with_a_utc_offset_is_the_same_instant_in_both_engines(tmp_path):
    """odc-stac dropped the offset without converting (18:05+01:00 became 18:05); stackstac converted."""
    d, _ = localize(LANDSAT, tmp_path, ["red"], raster_bands=True, datetime="2020-01-14T18:05:46.5+01:00")
    ds = _both([pystac.Item.from_dict(d)], bands=["red"])
    assert ds.time.values[0] == np.datetime64("2020-01-14T17:05:46.5", "ns")


@pytest.mark.parametrize("engine", ["odc", "stackstac"])
def test_an_integer_cube_marks_pixels_that_are_nodata_in_any_band_invalid(tmp_path, engine):
    """uint16 assets with nodata 0: a pixel is invalid where any band is 0 (that band is missing there, as NaN
    says in a float cube of the same items), and predict leaves it NaN."""
    from stac_items import make_ckpt

    rng = np.random.default_rng(3)
    data = rng.integers(1, 10_000, size=(3, 24, 24), dtype=np.uint16)
    data[:, 0, :5] = 0  # nodata in every band: invalid
    data[0, 5, :4] = 0  # nodata in one band only: invalid too (a model fed 0 as a reflectance answers garbage)
    tr = from_origin(600_000.0, 4_000_000.0, 10.0, 10.0)
    b = transform_bounds(CRS, "EPSG:4326", 600_000.0, 4_000_000.0 - 240.0, 600_240.0, 4_000_000.0)
    item = pystac.Item(
        id="i0", bbox=list(b), datetime=dt.datetime(2021, 6, 1, tzinfo=dt.UTC), properties={},
        geometry={"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]]},
    )  # fmt: skip
    ProjectionExtension.ext(item, add_if_missing=True).apply(code=CRS, shape=[24, 24], transform=list(tr)[:6])
    for k, band in enumerate(["red", "green", "nir"]):
        path = write_tif(tmp_path / f"{band}.tif", data[k : k + 1], transform=tr, nodata=0, cog=True)
        asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"])
        item.add_asset(band, asset)
        RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(data_type="uint16", nodata=0)]
    ds = geoarray.from_stac([item], bands=["red", "green", "nir"], engine=engine)
    assert ds.imagery.dtype == np.uint16
    expected = np.ones((24, 24), dtype=bool)
    expected[0, :5] = False
    expected[5, :4] = False
    np.testing.assert_array_equal(ds["valid"].values[0], expected)
    np.testing.assert_array_equal(ds.imagery.values[0], data)
    out = geoarray.predict(ds, make_ckpt(tmp_path / "m.safetensors")).compute()
    np.testing.assert_array_equal(np.isfinite(out["probabilities"].values[0]).all(0), expected)
    assert (out["mask"].values[0][~expected] == out["mask"].attrs["nodata"]).all()
    # a float cube has NaN where the pixel is missing instead, and no valid variable
    f = geoarray.from_stac([item], bands=["red", "green", "nir"], engine=engine, dtype="float32")
    assert "valid" not in f.data_vars and np.isnan(f.imagery.values[0, :, 0, :5]).all()
