"""Bad inputs to the cube contract and the GeoTIFF reader/writer, each refused with a GeoArrayError that says
what was found, what was expected and the fix, before any work or write.

The inputs mimic what was found on real rasters (Landsat per-band files, fill without a nodata tag, mixed
10/20 m grids, scenes from another area); every file is written here with rasterio.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import coded, tree_digest, write_tif
from rasterio.control import GroundControlPoint as GCP
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

import geoarray
from geoarray.errors import (
    CRSError,
    CubeError,
    DimensionError,
    GeoArrayError,
    NoOverlapError,
    RasterError,
    StoreError,
    StoreExistsError,
    TimeError,
)
from geoarray.io.geotiff import export_geotiff, from_geotiff, select_time

T = from_origin(500_000.0, 5_001_000.0, 10.0, 10.0)


def _tif(d, name, bands=3, **kw):
    return write_tif(d / name, coded((bands, 12, 16)), **kw)


def _scaled(d, name, scale):
    p = write_tif(d / name, np.full((1, 8, 8), 7000, np.uint16))
    with rasterio.open(p, "r+") as dst:
        dst.scales, dst.offsets = (scale,), (0.0,)
    return p


def _raw(d, name, **profile):
    """A GeoTIFF written with a hand-made profile (GCPs, no transform, ...)."""
    kw = {"driver": "GTiff", "height": 8, "width": 8, "count": 1, "dtype": "uint8", **profile}
    with rasterio.open(d / name, "w", **kw) as dst:
        dst.write(np.ones((1, 8, 8), kw["dtype"]))
    return d / name


_GCPS = [GCP(0, 0, 500_000, 5_001_000), GCP(0, 8, 500_080, 5_001_000), GCP(8, 0, 500_000, 5_000_920)]


# (id, make(tmp_path) -> from_geotiff kwargs, exception, message pattern)
FROM_GEOTIFF = [
    (
        "chunk-0",
        lambda d: {"paths": _tif(d, "a_20200101.tif"), "chunk": 0},
        RasterError,
        r"chunk=0; expected a whole",
    ),
    ("chunk-neg", lambda d: {"paths": _tif(d, "a_20200101.tif"), "chunk": -5}, RasterError, "chunk=-5"),
    ("chunk-float", lambda d: {"paths": _tif(d, "a_20200101.tif"), "chunk": 2.5}, RasterError, "chunk=2.5"),
    ("chunk-bool", lambda d: {"paths": _tif(d, "a_20200101.tif"), "chunk": True}, RasterError, "chunk=True"),
    (
        "stack-typo",
        lambda d: {"paths": _tif(d, "a_20200101.tif"), "stack": "bands"},
        RasterError,
        "'time'.*'band'",
    ),
    (
        "nodata-str",
        lambda d: {"paths": _tif(d, "a_20200101.tif"), "nodata": "0"},
        RasterError,
        "expected a number",
    ),
    (
        "nodata-empty",
        lambda d: {"paths": _tif(d, "a_20200101.tif"), "nodata": []},
        RasterError,
        "expected a number",
    ),
    (
        "nodata-count",
        lambda d: {"paths": _tif(d, "a_20200101.tif"), "nodata": [0, 0]},
        RasterError,
        r"2 values for 3 bands",
    ),
    (
        "nodata-out-of-range",
        lambda d: {"paths": write_tif(d / "u_20200101.tif", np.ones((1, 4, 4), np.uint8)), "nodata": -9999},
        RasterError,
        r"cannot occur in uint8 pixels",
    ),
    (
        "nodata-nan-in-ints",
        lambda d: {"paths": write_tif(d / "u_20200101.tif", np.ones((1, 4, 4), np.uint16)), "nodata": np.nan},
        RasterError,
        r"nodata=nan cannot occur in uint16",
    ),
    (
        "times-length",
        lambda d: {"paths": _tif(d, "a.tif"), "times": ["2020-01-01", "2020-01-02"]},
        TimeError,
        "got 2 times for 1 files.*stack='band'",
    ),
    (
        "gcps-only",
        lambda d: {"paths": _raw(d, "g_20200101.tif", gcps=_GCPS, crs=CRS.from_epsg(32633))},
        CRSError,
        r"located by 3 ground control points.*gdalwarp",
    ),
    (
        "no-geotransform",
        lambda d: {"paths": _raw(d, "i_20200101.tif", crs=CRS.from_epsg(32633))},
        RasterError,
        "has a CRS but no geotransform",
    ),
    (
        "rotated-first",
        lambda d: {"paths": _tif(d, "r_20200101.tif", transform=Affine(10, 2, 500_000, 2, -10, 5_001_000))},
        RasterError,
        "rotated or sheared.*north-up",
    ),
    (
        "complex",
        lambda d: {"paths": _raw(d, "c_20200101.tif", dtype="complex64", crs="EPSG:32633", transform=T)},
        RasterError,
        "holds complex64 pixels; expected real numbers",
    ),
    ("glob", lambda d: {"paths": str(d / "*.tif")}, RasterError, r"Patterns are not expanded.*glob.glob"),
    (
        "sensor-list",
        lambda d: {"paths": _tif(d, "a_20200101.tif"), "sensor": ["L8"]},
        RasterError,
        "expected one name",
    ),
    ("times-nat", lambda d: {"paths": _tif(d, "a.tif"), "times": [None]}, TimeError, r"missing date \(NaT\)"),
    ("directory", lambda d: {"paths": d}, RasterError, r"is a directory; expected a GeoTIFF file.*glob"),
    (
        "other-area",
        lambda d: {
            "paths": [
                _tif(d, "a_20200101.tif"),
                _tif(
                    d, "b_20200201.tif", crs="EPSG:4326", transform=from_origin(-106.0, 40.6, 0.0015, 0.0015)
                ),
            ]
        },
        NoOverlapError,
        r"'b_20200201.tif' .* does not overlap the grid of the first file 'a_20200101.tif'",
    ),
    (
        "same-date",
        lambda d: {"paths": [_tif(d, "L_20200518_B2.tif", bands=1), _tif(d, "L_20200518_B3.tif", bands=1)]},
        TimeError,
        r"share the date 2020-05-18.*stack='band'.*mosaic",
    ),
    (
        "band-counts",
        lambda d: {"paths": [_tif(d, "a_20200101.tif", bands=3), _tif(d, "b_20200201.tif", bands=4)]},
        RasterError,
        r"different band counts .*stack='band'",
    ),
    (
        "band-stack-dates-differ",
        lambda d: {"paths": [_tif(d, "x_20200101.tif"), _tif(d, "x_20200201.tif")], "stack": "band"},
        TimeError,
        r"different dates \{'x_20200101.tif': '2020-01-01', 'x_20200201.tif': '2020-02-01'\}",
    ),
    (
        "band-stack-no-date",
        lambda d: {"paths": [_tif(d, "red.tif", bands=1), _tif(d, "nir.tif", bands=1)], "stack": "band"},
        TimeError,
        r"no date for the bands .*times=\['2020-05-18'\]",
    ),
    (
        "band-stack-many-times",
        lambda d: {
            "paths": [_tif(d, "r.tif"), _tif(d, "n.tif")],
            "stack": "band",
            "times": ["2020-01-01"] * 2,
        },
        TimeError,
        "give one date",
    ),
    (
        "band-stack-names",
        lambda d: {
            "paths": [_tif(d, "r.tif"), _tif(d, "n.tif")],
            "stack": "band",
            "bands": ["r", "n"],
            "times": "2020-01-01",
        },
        RasterError,
        r"2 band names .* for 6 bands \(all files together",
    ),
    (
        "scales-differ",
        lambda d: {"paths": [_scaled(d, "a_20200101.tif", 2.75e-5), _scaled(d, "b_20200201.tif", 1e-4)]},
        RasterError,
        "scale/offset tags differ between dates",
    ),
]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(
    ("make", "exc", "pattern"), [c[1:] for c in FROM_GEOTIFF], ids=[c[0] for c in FROM_GEOTIFF]
)
def test_from_geotiff_refuses(tmp_path, make, exc, pattern):
    kw = make(tmp_path)
    with pytest.raises(exc, match=pattern) as info:
        from_geotiff(kw.pop("paths"), **kw)
    assert isinstance(info.value, GeoArrayError)


def _uneven(ds):
    fine = ds.imagery.isel(band=[0])
    coarse = ds.imagery.isel(band=[1], x=slice(None, None, 2)).assign_coords(
        band=["b20"], x=lambda a: a.x + 5.0
    )
    return (
        xr.concat([fine, coarse], "band", join="outer").to_dataset(name="imagery").rio.write_crs(ds.rio.crs)
    )


# (id, mutate(synth), exception, pattern) for validate_cube and write_cube
CUBES = [
    ("uneven-x", _uneven, DimensionError, r"'x' is not evenly spaced.*reproject_match"),
    ("uneven-y", lambda d: d.isel(y=[0, 1, 2, 5, 6, 7]), DimensionError, r"'y' is not evenly spaced"),
    ("no-x", lambda d: d.isel(x=slice(0, 0)), DimensionError, "no 'x' to hold imagery.*slice"),
    ("no-dates", lambda d: d.isel(time=[]), DimensionError, "no 'time'"),
    ("no-bands", lambda d: d.sel(band=[]), DimensionError, "no 'band'"),
    ("complex", lambda d: d.assign(imagery=d.imagery + 1j), CubeError, r"complex\d+ values; expected real"),
]


@pytest.mark.parametrize(("mutate", "exc", "pattern"), [c[1:] for c in CUBES], ids=[c[0] for c in CUBES])
def test_validate_and_write_refuse(tmp_path, synth, mutate, exc, pattern):
    bad = mutate(synth)
    with pytest.raises(exc, match=pattern):
        geoarray.validate_cube(bad)
    with pytest.raises(exc, match=pattern):
        geoarray.write_cube(bad, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def _file(d):
    (d / "c.zarr").write_text("x")
    return d / "c.zarr"


def _folder(d):
    (d / "c.zarr").mkdir()
    (d / "c.zarr" / "keep.txt").write_text("x")
    return d / "c.zarr"


def _not_a_cube(d):
    xr.Dataset({"a": (("r", "c"), np.zeros((2, 2)))}).to_zarr(d / "c.zarr", zarr_format=3, consolidated=False)
    return d / "c.zarr"


# (id, make target, mode, exception, pattern) for write_cube on bad paths
STORES = [
    ("file-w", _file, "w", StoreExistsError, "is a file, not a Zarr store"),
    ("file-w-", _file, "w-", StoreExistsError, "is a file, not a Zarr store"),
    ("file-a", _file, "a", StoreError, "is a file, not a Zarr store"),
    ("folder-w", _folder, "w", StoreExistsError, r"not a Zarr store \(it holds \['keep.txt'\]\)"),
    ("folder-a", _folder, "a", StoreError, "directory but not a Zarr store"),
    ("not-a-cube-a", _not_a_cube, "a", StoreError, "has no imagery variable"),
]


@pytest.mark.parametrize(
    ("make", "mode", "exc", "pattern"), [c[1:] for c in STORES], ids=[c[0] for c in STORES]
)
def test_write_cube_refuses_bad_targets_and_leaves_them_alone(tmp_path, synth, make, mode, exc, pattern):
    target = make(tmp_path)
    before = tree_digest(tmp_path)
    with pytest.raises(exc, match=pattern):
        geoarray.write_cube(synth, target, mode=mode)
    assert tree_digest(tmp_path) == before


# (id, make DataArray from synth, exception, pattern) for export_geotiff
EXPORTS = [
    ("no-pixels", lambda d: d.imagery.isel(time=0, x=slice(0, 0)), RasterError, "has no pixels"),
    ("one-pixel", lambda d: d.imagery.isel(time=0, y=slice(0, 1)), RasterError, "1 pixel along 'y'"),
    ("uneven", lambda d: d.imagery.isel(time=0, y=[0, 1, 3]), DimensionError, "not evenly spaced"),
]


@pytest.mark.parametrize(("make", "exc", "pattern"), [c[1:] for c in EXPORTS], ids=[c[0] for c in EXPORTS])
def test_export_geotiff_refuses(tmp_path, synth, make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        export_geotiff(make(synth), tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    ("when", "pattern"),
    [
        (None, "has 3 dates"),
        (7, "out of range"),
        ("-4", "out of range"),
        ("1999-12-31", "has no date"),
        ("x", "neither"),
    ],
)
def test_select_time_refuses(synth, when, pattern):
    with pytest.raises(RasterError, match=pattern):
        select_time(synth.imagery, when)
