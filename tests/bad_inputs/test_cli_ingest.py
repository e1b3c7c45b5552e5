"""Bad command-line values to `geoarray ingest`: one clear line and a non-zero exit, nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from geoarray.cli import app
from geoarray.datasets import sample_path

runner = CliRunner()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--times", "01/02/2020"], "not an ISO date"),
        (["--times", "2020-01-02,"], "empty item"),
        (["--bands", "B1,,B3,B4,B5,B7"], "empty item"),
    ],
    ids=["ambiguous-date", "empty-date", "empty-band"],
)
def test_ingest_geotiff_refuses_bad_lists(tmp_path, extra, match):
    out = tmp_path / "c.zarr"
    r = runner.invoke(app, ["ingest", "geotiff", sample_path(), "-o", str(out), *extra])
    assert r.exit_code != 0
    assert match in r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_ingest_geotiff_strips_band_names(tmp_path):
    import geoarray

    out = tmp_path / "c.zarr"
    bands = "B1, B2, B3 ,B4,B5,B7"
    r = runner.invoke(
        app, ["ingest", "geotiff", sample_path(), "-o", str(out), "--times", "2020-01-02", "--bands", bands]
    )
    assert r.exit_code == 0, r.output
    assert [str(b) for b in geoarray.open_cube(out)["band"].values] == ["B1", "B2", "B3", "B4", "B5", "B7"]


def test_ingest_stac_refuses_a_bbox_that_is_not_numbers(tmp_path):
    items = tmp_path / "items.json"
    items.write_text('{"type": "FeatureCollection", "features": []}')
    r = runner.invoke(
        app,
        ["ingest", "stac", str(items), "-o", str(tmp_path / "c.zarr"), "--bands", "red", "--bbox", "a,b,c,d"],
    )
    assert r.exit_code != 0 and "--bbox" in r.output and "Traceback" not in r.output


def test_ingest_geotiff_nodata_marks_fill_invalid(tmp_path):
    """Landsat files without a nodata tag: --nodata 0 makes the all-zero fill invalid, and only it."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    import geoarray

    data = np.random.default_rng(0).integers(1, 255, size=(3, 40, 50), dtype=np.uint8)
    data[:, :10, :] = 0  # the fill: every band 0
    data[0, 20, 20] = 0  # a dark pixel in one band is data
    path = tmp_path / "scene.tif"
    prof = dict(driver="GTiff", width=50, height=40, count=3, dtype="uint8", crs="EPSG:32621")
    with rasterio.open(path, "w", transform=from_origin(500000, 4000000, 30, 30), **prof) as dst:
        dst.write(data)
    out = tmp_path / "c.zarr"
    r = runner.invoke(
        app, ["ingest", "geotiff", str(path), "-o", str(out), "--times", "2020-05-18", "--nodata", "0"]
    )
    assert r.exit_code == 0, r.output
    valid = geoarray.open_cube(out)["valid"].isel(time=0).values
    assert not valid[:10].any() and valid[10:].all()
    r = runner.invoke(
        app, ["ingest", "geotiff", str(path), "-o", str(tmp_path / "d.zarr"), "--nodata", "zero"]
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
