"""The second real-data hunt on the loading side (tests/bad_inputs/HUNT-2026-11-30-load.md): each test pins
one fix, on real Landsat pixels (the shipped L7_ETMs.tif, cut small) written as GeoTIFFs/COGs with rasterio.
"""

from __future__ import annotations

import datetime as dt

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
    ds = geoarray.from_geotiff(path, times=[T0])
    assert "valid" in ds
    np.testing.assert_array_equal(ds.valid.values[0], ~_box())
    np.testing.assert_array_equal(ds.imagery.values[0], a)  # the pixels themselves are untouched


def test_alpha_band_is_a_mask_not_a_band(tmp_path, l7):
    """Before: an RGBA file gave a 4-band cube (alpha as data) with no `valid`."""
    a, prof = l7
    rgba = np.concatenate([a[:3], np.full((1, H, W), 255, np.uint8)])
    rgba[3][_box()] = 0
    path = _write(tmp_path / "rgba.tif", rgba, prof, photometric="RGB", alpha="YES")
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
    ds = geoarray.from_geotiff([ref, path], times=[T0, "2020-02-01"], resampling="nearest")
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
