"""The fourth real-data hunt: outputs (export_geotiff, plots, CLI on stores, examples), predict's options, object
storage and cluster errors; and the third hunt's leftovers.

Each test is one bad row of tests/bad_inputs/HUNT-2026-11-30-out.md (or a leftover of HUNT-2026-11-30-ssl.md);
its comment says what happened before.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_checkpoint

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError

BANDS = ("blue", "green", "red", "nir")


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=48, n_times=3, seed=3).load()


# -- the third hunt's leftovers ---------------------------------------------------------------------------------
def _regions(values):
    """A GeoJSON FeatureCollection (EPSG:4326 by RFC 7946) of one small square per value."""
    feats = [
        {
            "type": "Feature",
            "properties": {"kind": v},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[i, 0], [i + 0.5, 0], [i + 0.5, 0.5], [i, 0.5], [i, 0]]],
            },
        }
        for i, v in enumerate(values)
    ]
    return {"type": "FeatureCollection", "features": feats}


def test_region_values_mixing_numbers_and_text_are_refused():
    # ssl leftover (#25): 1 and "1" became one class "1" silently (and 1.0 beside "1" two classes)
    from geoarray.chips.regions import _class_names

    assert _class_names([2, 10, 1.0]) == (["2", "10", "1"], ["1", "2", "10"])
    assert _class_names(["b", "a"]) == (["b", "a"], ["a", "b"])
    for values in ([1, "1"], [1.0, "1", "water"]):
        with pytest.raises(TrainError, match=r"mix numbers \(1(\.0)?\) and text \('1'"):
            _class_names(values)


def test_rasterize_regions_refuses_mixed_class_values(cube):
    # the same through the public path, before any rasterising
    from geoarray.chips.regions import rasterize_regions

    with pytest.raises(TrainError, match=r"mix numbers .* and text"):
        rasterize_regions(cube, _regions([1, "1"]), property="kind")


def test_fit_refuses_a_date_named_twice(cube, tmp_path):
    # ssl leftover (#29): fit(times=[0, 0]) trained on the same date twice; predict_chips refuses it
    out = tmp_path / "m.safetensors"
    for times in ([0, 0], [0, -3], [1, str(cube.time.values[1])[:10]]):
        with pytest.raises(TrainError, match=r"names a date twice .*expected each date once"):
            geoarray.fit(cube, task="segmentation", times=times, epochs=1, chip_size=16, out=str(out))
    assert not out.exists()


def test_positive_classes_alone_keeps_chips_holding_those_classes(cube):
    # ssl leftover (#29): positive_classes=[k] without min_positive did nothing: every labelled chip was kept
    from geoarray.chips import plan_chips

    lab, ok = cube["labels"].values, cube["valid"].values  # labels(time, y, x)
    every = plan_chips(cube, chip_size=8, val_fraction=0)
    rare = int(np.argmin(np.bincount(lab[lab != 255].ravel())))
    only = plan_chips(cube, chip_size=8, val_fraction=0, positive_classes=[rare])
    one = plan_chips(cube, chip_size=8, val_fraction=0, positive_classes=[rare], min_positive=1)
    # by hand: the 8 x 8 chips (one date each) holding a valid pixel of the class on their date
    hit = (lab == rare) & ok
    want = sum(bool(hit[w.t[0], w.y : w.y + 8, w.x : w.x + 8].any()) for w in every.train)
    assert 0 < want < len(every.train)
    assert len(only.train) == len(one.train) == want


@pytest.fixture(scope="module")
def pixel_encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "bt.safetensors"
    return make_checkpoint(path, "pixel_cnn", task="barlow_twins", width=8, out_channels=8)


def test_an_explicit_model_must_be_the_inits(cube, pixel_encoder, tmp_path):
    # ssl leftover: fit(task="finetune", init=<pixel_cnn>, model="unet") trained the init's pixel_cnn: an
    # explicit "unet" could not be told from fit's default and was ignored
    out = tmp_path / "ft.safetensors"
    opts = {"task": "finetune", "init": str(pixel_encoder), "epochs": 1, "chip_size": 16, "batch_size": 64,
            "pixels_per_chip": 16, "progress": False, "out": str(out)}
    with pytest.raises(TrainError, match=r"model='unet', but init=.* holds a 'pixel_cnn' encoder. Drop model="):
        geoarray.fit(cube, model="unet", **opts)
    assert not out.exists()
    # named and matching, or left out: trains the init's model
    for named in ({"model": "pixel_cnn"}, {}):
        ck = geoarray.load_checkpoint(geoarray.fit(cube, **named, **opts))
        assert ck.meta["model"]["name"] == "pixel_cnn"


# -- export_geotiff ---------------------------------------------------------------------------------------------
def test_exported_class_maps_keep_class_ids_in_their_overviews(tmp_path):
    # out #3: a mask larger than one 512 px tile got GDAL's COG default overviews, cubic: ids 0/2/4/6 of the
    # real L8 scene became 0..7 in the overview (ids no pixel holds); probabilities went outside [0, 1]
    import rasterio
    import xarray as xr

    n = 1100
    y, x = np.arange(n)[::-1] * 30.0 + 15, np.arange(n) * 30.0 + 15
    ids = np.zeros((n, n), np.uint8)
    ids[:, 1::2] = 6  # alternating columns: any interpolation makes values between 0 and 6
    ids[:5] = 255
    mask = xr.DataArray(ids, dims=("y", "x"), coords={"y": y, "x": x}, name="mask", attrs={"nodata": 255})
    p = np.zeros((1, n, n), np.float32)
    p[0, :, ::7] = 1.0
    prob = xr.DataArray(p, dims=("class", "y", "x"), coords={"class": ["a"], "y": y, "x": x}, name="p")
    for da, name in ((mask, "m.tif"), (prob, "p.tif")):
        geoarray.export_geotiff(da.rio.write_crs("EPSG:32633"), tmp_path / name)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.overviews(1) == [2, 4]
        for f in (2, 4):
            assert set(np.unique(src.read(1, out_shape=(n // f, n // f)))) <= {0, 6, 255}
    with rasterio.open(tmp_path / "p.tif") as src:
        o = src.read(1, out_shape=(n // 2, n // 2))
        assert 0 <= o.min() and o.max() <= 1
