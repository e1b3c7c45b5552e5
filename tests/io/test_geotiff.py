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
