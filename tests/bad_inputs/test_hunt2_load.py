"""The second real-data hunt on the loading side (tests/bad_inputs/HUNT-2026-11-30-load.md): each test pins
one fix, on real Landsat pixels (the shipped L7_ETMs.tif, cut small) written as GeoTIFFs/COGs with rasterio.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

import geoarray
from geoarray.errors import GeoArrayError

T0 = "2020-01-01"
H, W = 48, 64  # the cut: small, so every test stays well under a second or two


@pytest.fixture(scope="module")
def l7():
    """(pixels (6, H, W) uint8, profile) of a real L7 ETM+ cut."""
    with rasterio.open(geoarray.datasets.sample_path()) as src:
        win = Window(100, 120, W, H)
        a = src.read(window=win)
        prof = {
            "driver": "GTiff",
            "height": H,
            "width": W,
            "count": a.shape[0],
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.window_transform(win),
        }
    return a, prof


def _write(path, a, prof, **over):
    p = {**prof, "count": a.shape[0], "dtype": str(a.dtype), **over}
    with rasterio.open(path, "w", **p) as dst:
        dst.write(a)
    return path


def _box():
    m = np.zeros((H, W), bool)
    m[:10, :20] = True
    return m


# -- GDAL masks: an internal mask or an alpha band, and no nodata tag ----------------------------------------


def test_internal_mask_marks_valid_false(tmp_path, l7):
    """Before: the masked pixels were read as data and no `valid` was made (silent)."""
    a, prof = l7
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as dst:
        dst.write(a)
        dst.write_mask(np.where(_box(), 0, 255).astype(np.uint8))
    ds = geoarray.from_geotiff(path, times=[T0], chunk=16)  # the box spans several blocks: windows line up
    assert "valid" in ds
    np.testing.assert_array_equal(ds.valid.values[0], ~_box())
    np.testing.assert_array_equal(ds.imagery.values[0], a)  # the pixels themselves are untouched


@pytest.mark.parametrize("nodata", [None, 0])
def test_alpha_band_is_a_mask_not_a_band(tmp_path, l7, nodata):
    """Before: an RGBA file gave a 4-band cube (alpha as data) with no `valid`. The alpha band counts even
    beside a nodata tag (GDAL's own masks then follow the tag and ignore the alpha)."""
    a, prof = l7
    rgba = np.concatenate([a[:3], np.full((1, H, W), 255, np.uint8)])
    rgba[3][_box()] = 0  # transparent, while the RGB values under it are real data
    path = _write(tmp_path / "rgba.tif", rgba, prof, photometric="RGB", alpha="YES", nodata=nodata)
    ds = geoarray.from_geotiff(path, times=[T0])
    assert ds.sizes["band"] == 3
    np.testing.assert_array_equal(ds.imagery.values[0], a[:3])
    np.testing.assert_array_equal(ds.valid.values[0], ~_box())


def test_mask_of_a_warped_file_is_warped_too(tmp_path, l7):
    """A masked file warped onto another file's grid (shifted by a whole pixel, so nearest is exact)."""
    a, prof = l7
    ref = _write(tmp_path / "ref.tif", a, prof)
    shifted = {**prof, "transform": prof["transform"] * Affine.translation(1, 1)}
    path = tmp_path / "masked_shifted.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **shifted) as dst:
        dst.write(a)
        dst.write_mask(np.where(_box(), 0, 255).astype(np.uint8))
    ds = geoarray.from_geotiff([ref, path], times=[T0, "2020-02-01"], resampling="nearest", chunk=16)
    want = np.zeros((H, W), bool)  # on the reference grid: the box moves by one pixel, plus the uncovered edge
    want[1:11, 1:21] = True
    want[0, :] = want[:, 0] = True
    np.testing.assert_array_equal(~ds.valid.values[1], want)
    assert ds.valid.values[0].all()


# -- stack="band": fill in one file is fill, whatever the other files hold --------------------------------


def test_stack_band_fill_in_one_file_is_invalid(tmp_path, l7):
    """Before: valid was False only where every file was nodata, so one band's fill (e.g. a float band with
    nodata beside another file without it) was kept as data."""
    a, prof = l7
    b1 = a[:1].astype("float64")
    b1[0][_box()] = 32768.0  # like LE07 L2SP's float64 B1 with nodata 32768
    p1 = _write(tmp_path / "L7_B1.tif", b1, prof, nodata=32768.0)
    p2 = _write(tmp_path / "L7_B2.tif", a[1:2], prof, nodata=0)  # data everywhere in the box
    ds = geoarray.from_geotiff([p1, p2], stack="band", times=T0)
    np.testing.assert_array_equal(ds.valid.values[0], ~_box())


# -- from_stac on real pixels: geographic output, chunk, raster:bands scale/offset ------------------------


def _item(tmp_path, l7, iid="L7-2020-01-01", when=dt.datetime(2020, 1, 1, 13, tzinfo=dt.UTC), scale=None):
    """A STAC item (projection v2 + raster v1.1) whose two assets are real L7 bands written as COGs."""
    a, prof = l7
    t, crs = prof["transform"], prof["crs"]
    b = transform_bounds(crs, "EPSG:4326", t.c, t.f + H * t.e, t.c + W * t.a, t.f)
    item = pystac.Item(
        id=iid,
        geometry={"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]]},
        bbox=list(b),
        datetime=when,
        properties={"proj:code": f"EPSG:{crs.to_epsg()}", "proj:shape": [H, W], "proj:transform": list(t)[:6]},
        stac_extensions=[
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
    )  # fmt: skip
    for k, name in ((2, "red"), (3, "nir")):
        path = _write(tmp_path / f"{iid}_{name}.tif", a[k : k + 1], prof, driver="COG", nodata=0)
        rb = {"data_type": "uint8", "nodata": 0, **(scale or {})}
        item.add_asset(name, pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"],
                                          extra_fields={"raster:bands": [rb]}))  # fmt: skip
    return item


def test_stac_geographic_crs_gives_y_x_in_degrees(tmp_path, l7):
    """Before: odc-stac's latitude/longitude dims broke from_stac with a raw xarray ValueError."""
    item = _item(tmp_path, l7)
    ds = geoarray.from_stac([item], bands=["red", "nir"], crs="EPSG:4326", resolution=0.0003)
    assert ds.imagery.dims == ("time", "band", "y", "x")
    assert ds.rio.crs.to_epsg() == 4326
    b, r = item.bbox, 0.0003  # the cube's pixel centres lie in the item's lon/lat box (snapped to r)
    assert b[0] - r <= float(ds.x.min()) and float(ds.x.max()) <= b[2] + r
    assert b[1] - r <= float(ds.y.min()) and float(ds.y.max()) <= b[3] + r
    assert np.isclose(float(ds.x[1] - ds.x[0]), 0.0003) and np.isclose(float(ds.y[1] - ds.y[0]), -0.0003)
    geoarray.validate_cube(ds)
    assert int(ds.valid.sum()) > 0.8 * H * W * (28.5 / 33.4) ** 2  # real pixels landed (not all fill)


def test_stac_crs_in_degrees_without_resolution_is_refused(tmp_path, l7):
    """Before: the 28.5 m pixel size was kept as 28.5 degrees: a silent 1 x 1 pixel cube."""
    item = _item(tmp_path, l7)
    with pytest.raises(GeoArrayError, match=r"resolution=.*degrees.*about resolution=0\.000256"):
        geoarray.from_stac([item], bands=["red"], crs="EPSG:4326")


def test_stac_chunk_zero_is_refused(tmp_path, l7):
    """Before: ZeroDivisionError from dask."""
    with pytest.raises(GeoArrayError, match="chunk=0; expected a whole number"):
        geoarray.from_stac([_item(tmp_path, l7)], bands=["red"], chunk=0)


def test_stac_scale_offset_and_nodata_are_recorded(tmp_path, l7):
    """Before: the cube's attrs were empty, so Landsat C2's 2.75e-5 / -0.2 were lost (from_geotiff keeps
    GeoTIFF scale tags); the scales survive write_cube/open_cube."""
    item = _item(tmp_path, l7, scale={"scale": 2.75e-5, "offset": -0.2})
    ds = geoarray.from_stac([item], bands=["red", "nir"])
    assert ds.imagery.attrs == {"nodata": 0.0, "scales": [2.75e-5, 2.75e-5], "offsets": [-0.2, -0.2]}
    geoarray.write_cube(ds, tmp_path / "c.zarr")
    back = geoarray.open_cube(tmp_path / "c.zarr")
    assert back.imagery.attrs == ds.imagery.attrs
    np.testing.assert_array_equal(back.imagery.values[0], l7[0][2:4])


def test_stac_items_with_different_scale_offset_are_refused(tmp_path, l7):
    """Before: one cube silently mixed two units (e.g. Sentinel-2 L2A across processing baseline 04.00)."""
    old = _item(tmp_path, l7, iid="old", scale={"scale": 1e-4, "offset": 0.0})
    new = _item(tmp_path, l7, iid="new", when=dt.datetime(2022, 2, 1, tzinfo=dt.UTC),
                scale={"scale": 1e-4, "offset": -0.1})  # fmt: skip
    with pytest.raises(GeoArrayError, match=r"band 'red' has different raster:bands scale/offset.*'old'.*'new'"):
        geoarray.from_stac([old, new], bands=["red"])


def test_stac_rotated_grid_is_refused_with_the_fix(tmp_path, l7):
    """Before: odc-geo's raw `ValueError: Only axis aligned GeoBox can do this.`; with crs= and resolution=
    the same item loads north-up."""
    a, prof = l7
    rot = prof["transform"] * Affine.rotation(5)
    path = _write(tmp_path / "rot.tif", a[2:3], prof, driver="COG", transform=rot, nodata=0)
    item = _item(tmp_path, l7)
    item.properties["proj:transform"] = list(rot)[:6]
    item.assets = {}
    item.add_asset("red", pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"]))
    with pytest.raises(GeoArrayError, match=r"rotated or sheared.*crs='EPSG:31985', resolution=28.5"):
        geoarray.from_stac([item], bands=["red"])
    ds = geoarray.from_stac([item], bands=["red"], crs="EPSG:31985", resolution=28.5)
    assert float(ds.x[1] - ds.x[0]) == 28.5 and float(ds.y[1] - ds.y[0]) == -28.5


def test_stac_asset_with_a_gdal_mask_and_no_nodata_is_masked(tmp_path, l7):
    """Before: the masked pixels were loaded as data (odc-stac read the pixels only), first silently, then
    with a warning; now they are fill, and invalid, without a warning (more in tests/io/test_stac_masks.py)."""
    a, prof = l7
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **{**prof, "count": 1}) as dst:
        dst.write(a[2:3])
        dst.write_mask(np.where(_box(), 0, 255).astype(np.uint8))
    item = _item(tmp_path, l7)
    item.assets["red"].href = str(path)
    item.assets["red"].extra_fields["raster:bands"] = [{"data_type": "uint8"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", geoarray.errors.GeoArrayWarning)
        ds = geoarray.from_stac([item], bands=["red", "nir"])
    np.testing.assert_array_equal(~ds.valid.values[0], _box())
    np.testing.assert_array_equal(ds.imagery.values[0, 0], np.where(_box(), 0, a[2]))


# -- flipped grids beside north-up ones -------------------------------------------------------------------


@pytest.mark.parametrize("flip", ["south-up", "east-to-west"])
def test_flipped_file_beside_a_north_up_one_is_warped_not_refused(tmp_path, l7, flip):
    """Before: NoOverlapError ("does not overlap") for the same ground stored south-up or east-to-west:
    rasterio's bounds of a flipped grid have south > north (or west > east)."""
    a, prof = l7
    t = prof["transform"]
    ref = _write(tmp_path / "ref.tif", a, prof)
    if flip == "south-up":
        tr, flipped = Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * H), a[:, ::-1, :]
    else:
        tr, flipped = Affine(-t.a, 0, t.c + t.a * W, 0, t.e, t.f), a[:, :, ::-1]
    other = _write(tmp_path / "flipped.tif", np.ascontiguousarray(flipped), prof, transform=tr)
    for files in ([ref, other], [other, ref]):  # either grid may be the cube's
        ds = geoarray.from_geotiff(files, times=[T0, "2020-02-01"], resampling="nearest")
        np.testing.assert_array_equal(ds.imagery.values[0], ds.imagery.values[1])
        assert "valid" not in ds  # the flipped file covers the whole grid: no footprint edge


def test_stac_signed_band_keeps_its_real_zeros(tmp_path, l7):
    """A DEM-like int16 band (real zeros, nodata -9999 in the file, raster:bands without nodata). Before: the
    fill was 0, so every real 0 was marked invalid (silent); now the file's nodata tag is the fill."""
    a, prof = l7
    dem = a[2:3].astype("int16") - 60
    dem[0][_box()] = -9999
    zeros = dem[0] == 0
    assert zeros.sum() > 20  # real zeros outside the box
    item = _item(tmp_path, l7)
    path = _write(tmp_path / "dem.tif", dem, prof, driver="COG", nodata=-9999)
    item.assets["red"].href = str(path)
    item.assets["red"].extra_fields["raster:bands"] = [{"data_type": "int16"}]
    ds = geoarray.from_stac([item], bands=["red"])
    assert ds.imagery.attrs["nodata"] == -9999
    np.testing.assert_array_equal(ds.valid.values[0], ~_box())
    np.testing.assert_array_equal(ds.imagery.values[0, 0], dem[0])


def test_cli_shared_date_message_names_the_cli_flag(tmp_path, l7):
    """Before: `geoarray ingest` told the user to "pass times=[...]", a Python argument."""
    from typer.testing import CliRunner

    from geoarray.cli import app

    a, prof = l7
    files = [str(_write(tmp_path / f"L7_20200101_B{k}.tif", a[k : k + 1], prof)) for k in (1, 2)]
    r = CliRunner().invoke(app, ["ingest", "geotiff", *files, "-o", str(tmp_path / "c.zarr")])
    assert r.exit_code == 2
    assert "pass --times with one date per file" in r.output and "times=" not in r.output
    assert not (tmp_path / "c.zarr").exists()


def test_duplicate_band_names_are_refused_by_from_geotiff(tmp_path, l7):
    """Before: from_geotiff returned a cube with two bands of one name (refused only later, at write_cube)."""
    a, prof = l7
    b1 = str(_write(tmp_path / "L7_20200101_B1.tif", a[:1], prof))
    with pytest.raises(geoarray.errors.BandError, match=r"duplicate band names.*listed more than once"):
        geoarray.from_geotiff([b1, b1], stack="band")
    full = str(_write(tmp_path / "L7.tif", a, prof))
    with pytest.raises(geoarray.errors.BandError, match=r"duplicate band names \['a'\]"):
        geoarray.from_geotiff(full, times=[T0], bands=["a", "a", "b", "c", "d", "e"])


# -- write_cube/open_cube of a cube built by hand with rioxarray ----------------------------------------


@pytest.mark.parametrize(("dtype", "nodata", "scale"), [("uint8", 0, None), ("int16", -9999, None), ("uint16", 0, 2.75e-5)])
def test_rioxarray_built_cube_round_trips_raw(tmp_path, l7, dtype, nodata, scale):
    """rioxarray keeps nodata in attrs['_FillValue'] and scale/offset in attrs['scale_factor'/'add_offset'].
    Before: the store decoded them, so the cube came back float32 with NaN fill (or float64 physical values)."""
    import rioxarray

    a, prof = l7
    raw = a.astype(dtype)
    raw[:, _box()] = nodata
    path = _write(tmp_path / "f.tif", raw, prof, nodata=nodata)
    if scale:
        with rasterio.open(path, "r+") as dst:
            dst.scales, dst.offsets = (scale,) * 6, (-0.2,) * 6
    da = rioxarray.open_rasterio(path)
    cube = da.expand_dims(time=[np.datetime64(T0)]).assign_coords(band=[f"B{i}" for i in range(6)])
    cube = cube.to_dataset(name="imagery")
    geoarray.write_cube(cube, tmp_path / "c.zarr")
    back = geoarray.open_cube(tmp_path / "c.zarr")
    assert back.imagery.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.imagery.values[0], raw)
    assert back.imagery.attrs["nodata"] == nodata
    if scale:
        assert back.imagery.attrs["scales"] == [scale] * 6 and back.imagery.attrs["offsets"] == [-0.2] * 6
    assert "_FillValue" in cube.imagery.attrs  # the caller's cube is left as it was


@pytest.mark.parametrize("when", ["1600-01-01", "0020-05-18", "2300-01-01"])
def test_dates_outside_datetime64ns_are_refused(tmp_path, l7, when):
    """Before: times=['1600-01-01'] (or a typo like 0020) wrapped silently to a date in 2184."""
    a, prof = l7
    path = _write(tmp_path / "L7.tif", a, prof)
    with pytest.raises(geoarray.errors.TimeError, match="outside the dates a cube can hold"):
        geoarray.from_geotiff(path, times=[when])


def test_stac_item_without_scale_metadata_joins_the_stated_scaling(tmp_path, l7):
    """An item that states no scale/offset (no raster:bands scale) is not evidence of other units: the cube
    loads and records the scaling the other item states."""
    scaled = _item(tmp_path, l7, iid="scaled", scale={"scale": 2.75e-5, "offset": -0.2})
    bare = _item(tmp_path, l7, iid="bare", when=dt.datetime(2020, 2, 1, tzinfo=dt.UTC))
    ds = geoarray.from_stac([scaled, bare], bands=["red"])
    assert ds.imagery.attrs["scales"] == [2.75e-5] and ds.imagery.attrs["offsets"] == [-0.2]
    assert ds.sizes["time"] == 2


def test_one_file_per_band_on_several_dates_gets_the_recipe(tmp_path, l7):
    """Before: stack='time' said "pass stack='band'", and stack='band' said "use stack='time'": a loop."""
    a, prof = l7
    files = [str(_write(tmp_path / f"L7_{d}_B{k}.tif", a[k : k + 1], prof)) for d in ("20200101", "20200201") for k in (1, 2)]
    with pytest.raises(geoarray.errors.TimeError, match="one file per band on several dates, build one cube per date"):
        geoarray.from_geotiff(files)
    with pytest.raises(geoarray.errors.TimeError, match=r"one file per band on several dates.*xr\.concat"):
        geoarray.from_geotiff(files, stack="band")


def test_explicit_mask_beside_a_nodata_tag_counts_too(tmp_path, l7):
    """GDAL lets an explicit mask win over a nodata tag; before, only the tag was used and the masked box
    (real pixel values under it) stayed valid, on the file's own grid and warped."""
    a, prof = l7
    data = a.copy()
    data[:, 30:34, 40:44] = 0  # fill by the tag
    ref = _write(tmp_path / "ref.tif", a, prof)
    want = _box().copy()
    want[30:34, 40:44] = True
    for name, tr in (("same.tif", prof["transform"]), ("shifted.tif", prof["transform"] * Affine.translation(1, 1))):
        path = tmp_path / name
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **{**prof, "transform": tr, "nodata": 0}) as dst:
            dst.write(data)
            dst.write_mask(np.where(_box(), 0, 255).astype(np.uint8))
        if name == "same.tif":
            ds = geoarray.from_geotiff(path, times=[T0], chunk=16)
            np.testing.assert_array_equal(~ds.valid.values[0], want)
        else:
            ds = geoarray.from_geotiff([ref, path], times=[T0, "2020-02-01"], resampling="nearest", chunk=16)
            shifted = np.zeros((H, W), bool)
            shifted[1:, 1:] = want[:-1, :-1]
            shifted[0, :] = shifted[:, 0] = True  # the uncovered edge
            np.testing.assert_array_equal(~ds.valid.values[1], shifted)


def test_four_names_for_an_rgba_file_explain_the_alpha_band(tmp_path, l7):
    """With alpha read as a mask, four names for an RGBA file must say why it has three bands."""
    a, prof = l7
    rgba = np.concatenate([a[:3], np.full((1, H, W), 255, np.uint8)])
    path = _write(tmp_path / "rgba.tif", rgba, prof, photometric="RGB", alpha="YES")
    with pytest.raises(geoarray.errors.RasterError, match=r"for 3 bands; an alpha band .* --colorinterp"):
        geoarray.from_geotiff(path, times=[T0], bands=["r", "g", "b", "nir"])


@pytest.mark.parametrize("as_objects", [False, True])
def test_time_zone_aware_dates_get_a_hint_that_works(as_objects):
    """Hunt row 46: tz-aware dates (a pandas DatetimeIndex with tz, or Timestamps in an object array) are refused
    with a conversion that gives plain datetime64 in UTC (pd.to_datetime alone keeps the zone)."""
    import pandas as pd

    from geoarray.datasets import synthetic_cube
    from geoarray.errors import TimeError

    cube = synthetic_cube(size=(16, 16), n_times=2, seed=0)
    t = pd.DatetimeIndex(cube.time.values, tz="UTC").tz_convert("Europe/Berlin")
    ds = cube.assign_coords(time=np.array(list(t), dtype=object) if as_objects else t)
    with pytest.raises(TimeError, match=r"time-zone-aware dates .*Convert it with `(.+)`\.$") as e:
        geoarray.validate_cube(ds)
    hint = e.value.args[0].rsplit("Convert it with `", 1)[1][:-2]
    fixed = eval(hint, {"ds": ds, "pd": pd})  # the command the message gives
    assert geoarray.validate_cube(fixed) is None
    np.testing.assert_array_equal(fixed.time.values, cube.time.values)
