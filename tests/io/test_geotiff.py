from __future__ import annotations

import dask.array
import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import coded, write_tif
from rasterio.transform import from_origin

import geoarray
from geoarray.errors import CRSError, NoOverlapError, RasterError, TimeError

T0 = from_origin(500_000.0, 5_001_000.0, 10.0, 10.0)


@pytest.fixture
def two_dates(tmp_path):
    a = coded((3, 40, 50))
    b = coded((3, 40, 50), offset=10_000)
    # written out of order: the cube must come back sorted by date
    write_tif(tmp_path / "S2_20210611.tif", b, descriptions=["red", "green", "nir"])
    write_tif(tmp_path / "S2_20210501.tif", a, descriptions=["red", "green", "nir"])
    return tmp_path, a, b


def test_from_geotiff_reads_bands_dates_values_lazily(two_dates):
    d, a, b = two_dates
    ds = geoarray.from_geotiff(sorted(d.glob("*.tif"), reverse=True))
    geoarray.validate_cube(ds)
    assert isinstance(ds.imagery.data, dask.array.Array)
    assert list(ds.band.values) == ["red", "green", "nir"]
    assert [str(t)[:10] for t in ds.time.values] == ["2021-05-01", "2021-06-11"]
    np.testing.assert_array_equal(ds.imagery.values[0], a)
    np.testing.assert_array_equal(ds.imagery.values[1], b)
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.x.values[0] == 500_005.0 and ds.y.values[0] == 5_000_995.0  # pixel centres


def test_from_geotiff_dates_from_tags_and_names_from_argument(tmp_path):
    write_tif(tmp_path / "a.tif", coded((2, 8, 8)), tags={"TIFFTAG_DATETIME": "2020:07:04 10:00:00"})
    ds = geoarray.from_geotiff(tmp_path / "a.tif", bands=["x1", "x2"], sensor="WV")
    assert str(ds.time.values[0])[:19] == "2020-07-04T10:00:00"
    assert list(ds.band.values) == ["x1", "x2"] and list(ds.sensor.values) == ["WV"]


def test_from_geotiff_without_date_says_how_to_pass_times(tmp_path):
    write_tif(tmp_path / "nodate.tif", coded((2, 8, 8)))
    with pytest.raises(TimeError, match=r"Pass `times=\[...\]`"):
        geoarray.from_geotiff(tmp_path / "nodate.tif")
    ds = geoarray.from_geotiff(tmp_path / "nodate.tif", times=["2019-01-01"])
    assert list(ds.band.values) == ["B1", "B2"]


def test_from_geotiff_different_band_counts(tmp_path):
    write_tif(tmp_path / "a_20200101.tif", coded((3, 8, 8)))
    write_tif(tmp_path / "b_20200201.tif", coded((4, 8, 8)))
    with pytest.raises(
        RasterError, match=r"different band counts \{'a_20200101.tif': 3, 'b_20200201.tif': 4\}"
    ):
        geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_from_geotiff_missing_file_and_crs(tmp_path):
    with pytest.raises(RasterError, match="does not exist"):
        geoarray.from_geotiff(tmp_path / "missing_20200101.tif")
    with rasterio.open(
        tmp_path / "nocrs_20200101.tif", "w", driver="GTiff", height=4, width=4, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(CRSError, match="no CRS"):
        geoarray.from_geotiff(tmp_path / "nocrs_20200101.tif")


def test_from_geotiff_warps_other_grids_onto_the_first(tmp_path):
    a = coded((1, 40, 50))
    write_tif(tmp_path / "a_20200101.tif", a)
    # same data, grid shifted by (5, 3) whole pixels: nearest warping must land every value exactly
    shifted = from_origin(500_000.0 + 50.0, 5_001_000.0 - 30.0, 10.0, 10.0)
    write_tif(tmp_path / "b_20200201.tif", a, transform=shifted, nodata=-1.0)
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")), resampling="nearest")
    got = ds.imagery.values[1, 0]
    np.testing.assert_array_equal(got[3:, 5:], a[0, :-3, :-5])
    assert (got[:3] == -1).all() and (got[:, :5] == -1).all()
    valid = ds.valid.values
    assert valid[0].all() and not valid[1, :3].any() and valid[1, 3:, 5:].all()


def test_from_geotiff_reprojects_another_crs(tmp_path):
    # each pixel's value is its own position (band 0: column, band 1: row, in pixels), odc-geo style: a
    # linear field survives bilinear warping both ways, so any misplacement shows as a wrong coordinate
    yy, xx = np.mgrid[0:60, 0:60].astype(np.float32)
    pos = np.stack([xx, yy])
    write_tif(tmp_path / "a_20200101.tif", pos)
    da = xr.DataArray(pos, dims=("band", "y", "x")).rio.write_transform(T0)
    da = da.assign_coords(x=500_005.0 + 10 * np.arange(60), y=5_000_995.0 - 10 * np.arange(60)).rio.write_crs(
        "EPSG:32633"
    )
    da.rio.reproject("EPSG:4326", resampling=rasterio.enums.Resampling.bilinear).rio.to_raster(
        tmp_path / "b_20200301.tif"
    )
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")))
    assert ds.sizes["y"] == 60 and ds.rio.crs.to_epsg() == 32633
    np.testing.assert_array_equal(ds.imagery.values[0], pos)
    inner = ds.imagery.values[1, :, 5:-5, 5:-5]
    err = np.abs(inner - pos[:, 5:-5, 5:-5])
    # GDAL's warper approximates the transform to 0.125 px per warp (0.07 px measured here): half a pixel off
    # fails
    assert err.max() < 0.3, f"pixels land up to {err.max():.2f} px from where they belong"


# -- read_labels ---------------------------------------------------------------------------------------
def test_read_labels_clips_and_fills_outside_with_nodata(tmp_path, two_dates):
    d, _, _ = two_dates
    ds = geoarray.from_geotiff(sorted(d.glob("*.tif")))
    lab = (np.arange(20 * 30).reshape(20, 30) % 4).astype(np.uint8)
    # label raster covers rows 10..30 and cols 15..45 of the cube, and spills past its right edge
    write_tif(tmp_path / "lab.tif", lab, transform=from_origin(500_150.0, 5_000_900.0, 10.0, 10.0))
    out = geoarray.read_labels(tmp_path / "lab.tif", ds, classes=["a", "b", "c", "d"])
    assert out.dims == ("y", "x") and out.shape == (40, 50)
    assert out.attrs["classes"] == ["a", "b", "c", "d"] and out.attrs["nodata"] == 255
    v = out.values
    np.testing.assert_array_equal(v[10:30, 15:45], lab[:, :30])
    assert (v[:10] == 255).all() and (v[:, :15] == 255).all() and (v[:, 45:] == 255).all()
    ds["labels"] = out
    geoarray.validate_cube(ds)


def test_read_labels_in_another_crs_is_reprojected(tmp_path, synth):
    truth = synth.labels.isel(time=0)
    truth.rio.reproject("EPSG:4326", resampling=rasterio.enums.Resampling.nearest, nodata=255).rio.to_raster(
        tmp_path / "lab4326.tif"
    )
    out = geoarray.read_labels(tmp_path / "lab4326.tif", synth)
    agree = (out.values == truth.values).mean()
    assert agree > 0.95
    assert out.rio.crs == synth.rio.crs


def test_read_labels_without_overlap(tmp_path, synth):
    write_tif(
        tmp_path / "far.tif",
        np.zeros((10, 10), np.uint8),
        transform=from_origin(100_000.0, 1_000_000.0, 10, 10),
    )
    with pytest.raises(NoOverlapError, match="does not overlap the cube"):
        geoarray.read_labels(tmp_path / "far.tif", synth)


def test_read_labels_rejects_float_and_multiband(tmp_path, synth):
    write_tif(tmp_path / "f.tif", np.zeros((10, 10), np.float32))
    with pytest.raises(RasterError, match="expected integer class ids"):
        geoarray.read_labels(tmp_path / "f.tif", synth)
    write_tif(tmp_path / "m.tif", np.zeros((2, 10, 10), np.uint8))
    with pytest.raises(RasterError, match="single-band"):
        geoarray.read_labels(tmp_path / "m.tif", synth)


# -- export_geotiff ------------------------------------------------------------------------------------
def test_export_geotiff_writes_a_cog_with_georeferencing(tmp_path, synth):
    probs = synth.imagery.isel(time=0).rename(band="class")
    path = geoarray.export_geotiff(probs, tmp_path / "p.tif")
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs == synth.rio.crs
        assert src.transform.almost_equals(synth.rio.transform())
        assert src.descriptions == tuple(synth.band.values)
        np.testing.assert_array_equal(src.read(), probs.values)
    back = geoarray.from_geotiff(path, times=["2021-01-01"])
    np.testing.assert_array_equal(back.x.values, synth.x.values)


def test_export_geotiff_refuses_many_dates(tmp_path, synth):
    with pytest.raises(RasterError, match=r"isel\(time=0\)"):
        geoarray.export_geotiff(synth.labels, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_raster_tags_and_scales_do_not_leak_into_the_store(tmp_path):
    # GDAL statistics, scale/offset and nodata (as rasterio writes them) used to land in `valid`'s attrs, and
    # xarray then decoded the stored bool mask as float64 on reading
    path = tmp_path / "scene_2020-05-18.tif"
    data = np.arange(2 * 40 * 30, dtype="uint16").reshape(2, 40, 30)
    data[:, :3] = 0
    write_tif(path, data, nodata=0, tags={"STATISTICS_MEAN": "12.5"})
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (1.0, 1.0), (0.0, 0.0)
    ds = geoarray.from_geotiff(path)
    assert "STATISTICS_MEAN" not in ds.valid.attrs and "scale_factor" not in ds.valid.attrs
    geoarray.write_cube(ds, tmp_path / "c.zarr")
    back = geoarray.open_cube(tmp_path / "c.zarr")
    assert back.valid.dtype == bool and back.imagery.dtype == np.uint16
    assert not back.valid.values[0, :3].any() and back.valid.values[0, 3:].all()


# -- fill pixels: nodata= (issue 8) -------------------------------------------------------------------------
def _landsat_like(path, *, nodata=None, shape=(3, 30, 40)):
    """uint16 bands with fill 0 in every band on a tilted-scene border, and one dark pixel 0 in one band only."""
    rng = np.random.default_rng(1)
    data = rng.integers(5_000, 20_000, size=shape, dtype=np.uint16)
    yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]]
    fill = xx + yy < 12
    data[:, fill] = 0
    data[1, 20, 30] = 0  # a dark pixel in one band is data, not fill
    write_tif(path, data, nodata=nodata, tags={"DATE_ACQUIRED": "2020-05-18"})
    return data, fill


def test_nodata_argument_marks_fill_where_every_band_is_fill(tmp_path):
    _, fill = _landsat_like(tmp_path / "LC08.tif")
    assert "valid" not in geoarray.from_geotiff(tmp_path / "LC08.tif")  # no tag: nothing known
    ds = geoarray.from_geotiff(tmp_path / "LC08.tif", nodata=0)
    np.testing.assert_array_equal(ds.valid.values[0], ~fill)
    assert ds.valid.values[0, 20, 30] and ds.imagery.attrs["nodata"] == 0
    per_band = geoarray.from_geotiff(tmp_path / "LC08.tif", nodata=[0, 0, 0])
    np.testing.assert_array_equal(per_band.valid.values[0], ~fill)
    # a per-band value that only band 3 has: no pixel has every band at its nodata
    other = geoarray.from_geotiff(tmp_path / "LC08.tif", nodata=[0, 0, 7])
    assert other.valid.values.all()


def test_nodata_argument_replaces_a_wrong_tag(tmp_path):
    _, fill = _landsat_like(tmp_path / "tagged.tif", nodata=65535)
    assert geoarray.from_geotiff(tmp_path / "tagged.tif").valid.values.all()  # the tag marks nothing
    ds = geoarray.from_geotiff(tmp_path / "tagged.tif", nodata=0)
    np.testing.assert_array_equal(ds.valid.values[0], ~fill)


def test_nodata_keeps_fill_out_of_resampling_and_marks_the_warped_border(tmp_path):
    flat = np.full((1, 40, 50), 1000, np.uint16)
    write_tif(tmp_path / "a_20200101.tif", flat)
    edged = flat.copy()
    edged[:, :, :10] = 0  # fill on the left, no nodata tag
    half = from_origin(500_000.0 + 5.0, 5_001_000.0 - 5.0, 10.0, 10.0)  # half a pixel off: bilinear blends
    write_tif(tmp_path / "b_20200201.tif", edged, transform=half)
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")), nodata=0)
    got, ok = ds.imagery.values[1, 0], ds.valid.values[1]
    assert set(np.unique(got[ok])) == {1000}  # no fill blended into data
    assert not ok[:, :10].any() and ok[1:, 12:].all()


def test_warped_file_without_nodata_is_invalid_outside_its_footprint(tmp_path):
    a = coded((2, 40, 50)) + 1
    write_tif(tmp_path / "a_20200101.tif", a)
    shifted = from_origin(500_000.0 + 50.0, 5_001_000.0 - 30.0, 10.0, 10.0)  # 5 px right, 3 px down
    write_tif(tmp_path / "b_20200201.tif", a, transform=shifted)  # no nodata tag: warping fills with 0
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")), resampling="nearest")
    valid = ds.valid.values
    assert valid[0].all()
    expected = np.zeros((40, 50), bool)
    expected[3:, 5:] = True
    np.testing.assert_array_equal(valid[1], expected)
    np.testing.assert_array_equal(ds.imagery.values[1, :, 3:, 5:], a[:, :-3, :-5])


def test_warped_file_in_another_crs_gets_its_footprint(tmp_path):
    yy, xx = np.mgrid[0:60, 0:60].astype(np.float32)
    write_tif(tmp_path / "a_20200101.tif", (100 + xx + 2 * yy)[None])
    part = xr.DataArray((100 + xx + 2 * yy)[None, :30], dims=("band", "y", "x"))
    part = part.assign_coords(x=500_005.0 + 10 * np.arange(60), y=5_000_995.0 - 10 * np.arange(30))
    deg = part.rio.write_crs("EPSG:32633").rio.reproject("EPSG:4326")
    # written without a nodata tag, as such files come: the warped border is 0 like the data could be
    write_tif(
        tmp_path / "b_20200301.tif", np.nan_to_num(deg.values), crs="EPSG:4326", transform=deg.rio.transform()
    )
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")))
    valid = ds.valid.values[1]
    assert valid[2:27, 2:-2].all() and not valid[33:].any()  # the north half only


def test_nan_counts_as_nodata_in_float_files_that_declare_one(tmp_path):
    a = coded((2, 8, 8))
    a[:, 0] = np.nan  # NaN in every band: missing, beside the declared -9999
    a[:, 1] = -9999
    write_tif(tmp_path / "f_20200101.tif", a, nodata=-9999)
    ds = geoarray.from_geotiff(tmp_path / "f_20200101.tif")
    assert not ds.valid.values[0, :2].any() and ds.valid.values[0, 2:].all()


def test_parse_nodata_for_the_command_line():
    from geoarray.io.geotiff import parse_nodata

    assert parse_nodata("0") == 0.0 and parse_nodata(" 0, 0,255 ") == [0.0, 0.0, 255.0]
    assert np.isnan(parse_nodata("nan"))
    with pytest.raises(RasterError, match=r"--nodata 'zero'; expected a number"):
        parse_nodata("zero")


# -- one file per band: stack="band" (issue 8) --------------------------------------------------------------
def test_stack_band_makes_one_date_from_single_band_files(tmp_path):
    bands = {b: coded((1, 20, 30), offset=1000 * k) for k, b in enumerate(("B2", "B3", "B4"))}
    files = [write_tif(tmp_path / f"LC08_L1TP_224078_20200518_01_RT_{b}.TIF", v) for b, v in bands.items()]
    ds = geoarray.from_geotiff(files, stack="band")
    geoarray.validate_cube(ds)
    assert list(ds.band.values) == ["B2", "B3", "B4"] and ds.sizes["time"] == 1
    assert str(ds.time.values[0])[:10] == "2020-05-18"
    np.testing.assert_array_equal(ds.imagery.values[0], np.concatenate(list(bands.values())))
    named = geoarray.from_geotiff(files, stack="band", bands=["blue", "green", "red"], times="2020-05-19")
    assert (
        list(named.band.values) == ["blue", "green", "red"] and str(named.time.values[0])[:10] == "2020-05-19"
    )


def test_stack_band_names_from_descriptions_and_warps_other_grids(tmp_path):
    write_tif(tmp_path / "x.tif", coded((1, 20, 30)), descriptions=["red"])
    coarse = from_origin(500_000.0, 5_001_000.0, 20.0, 20.0)  # a 20 m band beside a 10 m one
    write_tif(tmp_path / "y.tif", coded((1, 10, 15)), transform=coarse, descriptions=["swir"])
    ds = geoarray.from_geotiff([tmp_path / "x.tif", tmp_path / "y.tif"], stack="band", times=["2021-01-01"])
    assert list(ds.band.values) == ["red", "swir"] and ds.sizes["y"] == 20 and ds.sizes["x"] == 30
    geoarray.validate_cube(ds)  # one grid: the first file's 10 m


def test_shared_date_points_at_stack_band(tmp_path):
    files = [write_tif(tmp_path / f"S_20200518_{b}.tif", coded((1, 8, 8))) for b in ("B2", "B3")]
    with pytest.raises(TimeError, match=r"share the date 2020-05-18.*pass stack='band'"):
        geoarray.from_geotiff(files)


def test_one_band_name_as_a_string_and_a_rotated_file_warped_onto_the_first(tmp_path):
    from rasterio.transform import Affine

    write_tif(tmp_path / "a_20200101.tif", coded((1, 20, 20)) + 1)
    # a rotated file is fine after the first: it is warped onto the first file's north-up grid
    write_tif(
        tmp_path / "b_20200201.tif",
        coded((1, 20, 20)) + 1,
        transform=Affine(10, 1, 500_000, 1, -10, 5_001_000),
    )
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")), bands="nir")
    assert list(ds.band.values) == ["nir"] and ds.rio.transform() == T0
    assert 0 < ds.valid.values[1].mean() < 1


# -- scale/offset, laziness -----------------------------------------------------------------------------
def test_scale_and_offset_tags_are_kept_per_band_and_must_agree_across_dates(tmp_path):
    a = np.full((2, 8, 8), 7000, np.uint16)
    for name in ("a_20200101.tif", "b_20200201.tif"):
        write_tif(tmp_path / name, a)
        with rasterio.open(tmp_path / name, "r+") as dst:
            dst.scales, dst.offsets = (2.75e-5, 2.75e-5), (-0.2, -0.2)
    ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")))
    assert ds.imagery.dtype == np.uint16
    assert ds.imagery.attrs["scales"] == [2.75e-5, 2.75e-5] and ds.imagery.attrs["offsets"] == [-0.2, -0.2]
    with rasterio.open(tmp_path / "b_20200201.tif", "r+") as dst:
        dst.scales, dst.offsets = (1.0, 1.0), (0.0, 0.0)
    with pytest.raises(RasterError, match="scale/offset tags differ between dates"):
        geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")))


def test_from_geotiff_with_masks_and_warping_stays_lazy(tmp_path):
    from helpers import raise_if_dask_computes

    a = coded((2, 40, 50)) + 1
    write_tif(tmp_path / "a_20200101.tif", a)
    write_tif(tmp_path / "b_20200201.tif", a, transform=from_origin(500_050.0, 5_000_970.0, 10.0, 10.0))
    with raise_if_dask_computes():
        ds = geoarray.from_geotiff(sorted(tmp_path.glob("*.tif")), nodata=0)
    assert isinstance(ds.valid.data, dask.array.Array)
    assert ds.valid.chunks == ds.imagery.isel(band=0).chunks


# -- export: dims by name, grids -----------------------------------------------------------------------
def test_export_takes_dims_by_name_and_writes_north_up(tmp_path, synth):
    img = synth.imagery.isel(time=0)
    ref = geoarray.export_geotiff(img, tmp_path / "ref.tif")
    moved = geoarray.export_geotiff(img.transpose("x", "band", "y"), tmp_path / "moved.tif")
    south_up = geoarray.export_geotiff(img.isel(y=slice(None, None, -1)), tmp_path / "s.tif")
    with rasterio.open(ref) as a, rasterio.open(moved) as b, rasterio.open(south_up) as c:
        assert a.transform == b.transform == c.transform and a.transform.e < 0
        np.testing.assert_array_equal(b.read(), a.read())
        np.testing.assert_array_equal(c.read(), a.read())


def test_export_of_an_uneven_grid_is_refused(tmp_path, synth):
    from geoarray.errors import DimensionError

    uneven = synth.imagery.isel(time=0, x=[0, 1, 2, 4, 5, 6])
    with pytest.raises(DimensionError, match="'x' is not evenly spaced"):
        geoarray.export_geotiff(uneven, tmp_path / "u.tif")
    assert not (tmp_path / "u.tif").exists()


def test_export_of_one_pixel_column_uses_the_recorded_transform_or_refuses(tmp_path, synth):
    col = synth.imagery.isel(time=0, x=slice(3, 4))
    with pytest.raises(RasterError, match="1 pixel along 'x', so its pixel size is unknown"):
        geoarray.export_geotiff(col, tmp_path / "c.tif")
    path = geoarray.export_geotiff(col.rio.write_transform(synth.rio.transform()), tmp_path / "c.tif")
    with rasterio.open(path) as src:
        assert src.transform.a == 10.0 and src.bounds.left == float(synth.x[3]) - 5.0


# -- select_time (geoarray export --time) ----------------------------------------------------------------
def test_select_time_by_index_and_by_day(synth):
    from geoarray.io.geotiff import select_time

    days = [str(t)[:10] for t in synth.time.values]
    assert select_time(synth.imagery, 1).time.values[0] == synth.time.values[1]
    assert select_time(synth.imagery, "-1").time.values[0] == synth.time.values[-1]
    assert select_time(synth.imagery, days[2]).sizes["time"] == 1
    assert select_time(synth.labels.isel(time=0), "2000-01-01").dims == ("y", "x")  # no time: as it is
    with pytest.raises(RasterError, match=r"has 3 dates .*--time"):
        select_time(synth.imagery, None)
    with pytest.raises(RasterError, match=r"time index 3 is out of range .*expected -3..2"):
        select_time(synth.imagery, "3")
    with pytest.raises(RasterError, match=r"has no date '1999-01-01'; it has \["):
        select_time(synth.imagery, "1999-01-01")
    with pytest.raises(RasterError, match="neither a date"):
        select_time(synth.imagery, "last")
    twice = synth.imagery.isel(time=[0, 0]).assign_coords(
        time=[synth.time.values[0], synth.time.values[0] + np.timedelta64(3, "h")]
    )
    with pytest.raises(RasterError, match="matches 2 dates"):
        select_time(twice, days[0])


def test_export_of_per_band_nodata_records_one_value_or_none(tmp_path, synth):
    img = synth.imagery.isel(time=0).fillna(0)
    same = geoarray.export_geotiff(img.assign_attrs(nodata=[0.0] * 4), tmp_path / "same.tif")
    mixed = geoarray.export_geotiff(img.assign_attrs(nodata=[0.0, 0.0, 0.0, 255.0]), tmp_path / "mixed.tif")
    with rasterio.open(same) as a, rasterio.open(mixed) as b:
        assert a.nodata == 0 and b.nodata is None  # a GeoTIFF has one nodata for all bands
