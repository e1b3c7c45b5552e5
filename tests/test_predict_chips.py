"""Chip-level inference (issue 11): a chip model applied to a whole cube, one class or embedding per chip, on a
chip grid with its own georeferencing, written into its own Zarr group and exportable as a GeoTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from conftest import make_checkpoint, tree_digest

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import BandError, PredictError, StoreError, StoreExistsError

BANDS = ["blue", "green", "red", "nir"]
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def cube():
    c = synthetic_cube(size=100, n_times=2, seed=1, chunks=48, cloud_fraction=0.0)
    return c.assign(valid=c.valid | True)  # every pixel valid: every chip runs


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random-init classifier whose head is centred on the chips' mean embedding, so classes vary by chip."""
    path = make_checkpoint(
        tmp_path_factory.mktemp("ck") / "cls.safetensors",
        "resnet18",
        task="classification",
        num_classes=3,
        classes=CLASSES,
        width=4,
        seed=3,
        _meta={"training": {"chip_size": 16}},
    )
    ck = geoarray.load_checkpoint(path)
    inp = ck.meta["input"]
    c = synthetic_cube(size=100, n_times=1, seed=1, cloud_fraction=0.0).imagery[0].values
    z = (c - np.asarray(inp["mean"])[:, None, None]) / np.asarray(inp["std"])[:, None, None]
    chips = (
        np.nan_to_num(z)[:, :96, :96].reshape(4, 6, 16, 6, 16).transpose(1, 3, 0, 2, 4).reshape(36, 4, 16, 16)
    )
    with torch.no_grad():
        e = ck.model.embed(torch.from_numpy(chips.astype(np.float32)))
        w = torch.randn(3, e.shape[1], generator=torch.Generator().manual_seed(0)) / e.std(0).clamp_min(1e-6)
        ck.model.head.weight.copy_(w)
        ck.model.head.bias.copy_(-w @ e.mean(0))
    return geoarray.save_checkpoint(
        path,
        ck.model,
        task="classification",
        bands=inp["bands"],
        mean=inp["mean"],
        std=inp["std"],
        classes=CLASSES,
        training={"chip_size": 16},
    )


def by_hand(cube, ck, t, y0, x0, size):
    """The checkpoint's model on one chip, normalised as training does: (x * scale - mean) / std, NaN -> 0."""
    inp = ck.meta["input"]
    x = (
        cube.imagery.sel(band=inp["bands"])
        .isel(time=t, y=slice(y0, y0 + size), x=slice(x0, x0 + size))
        .values
    )
    m = np.asarray(inp["mean"], np.float32)[:, None, None]
    s = np.asarray(inp["std"], np.float32)[:, None, None]
    z = np.nan_to_num((x.astype(np.float32) * inp["scale"] - m) / s).astype(np.float32)
    with torch.no_grad():
        return torch.softmax(ck.model(torch.from_numpy(z)[None]), 1)[0].numpy()


def test_chip_classes_equal_the_model_on_each_chip_by_hand_on_a_georeferenced_grid(cube, ckpt):
    out = geoarray.predict_chips(cube, ckpt)  # chip_size from the checkpoint: 16 px
    assert out.mask.dims == ("time", "y", "x") and out.probabilities.dims == ("time", "class", "y", "x")
    assert out.sizes == {"time": 2, "class": 3, "y": 6, "x": 6}  # 100 px // 16 = 6 whole chips
    ct, gt = cube.rio.transform(), out.rio.transform()
    assert (gt.a, gt.e) == (16 * ct.a, 16 * ct.e) == (160.0, -160.0)  # pixel = chip_size x res
    assert (gt.c, gt.f) == (ct.c, ct.f)  # the chip grid's corner is the cube's corner
    assert out.rio.crs == cube.rio.crs
    # y/x are chip centres: the centre of chip (i, j) is pixel (16 i + 8, 16 j + 8)'s corner
    np.testing.assert_allclose(out.x.values, ct.c + (16 * np.arange(6) + 8) * ct.a)
    np.testing.assert_allclose(out.y.values, ct.f + (16 * np.arange(6) + 8) * ct.e)
    probs = out.probabilities.values
    mask = out.mask.values
    ck = geoarray.load_checkpoint(ckpt)
    for t in range(2):
        for i in range(6):
            for j in range(6):
                p = by_hand(cube, ck, t, 16 * i, 16 * j, 16)
                np.testing.assert_allclose(probs[t, :, i, j], p, atol=1e-4)  # BN fused for inference
                assert mask[t, i, j] == p.argmax()
    assert len(np.unique(mask)) > 1  # not a constant map: the comparison means something


def test_chip_grid_is_written_into_its_own_group_and_exports_as_a_geotiff(tmp_path, cube, ckpt):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=32)
    before = tree_digest(store)
    lazy = geoarray.predict_chips(cube, ckpt)
    got = geoarray.predict_chips(geoarray.open_cube(store), ckpt, store=store, progress=True)
    after = tree_digest(store, exclude=("chips",))
    assert {k: v for k, v in after.items() if k != "zarr.json"} == {
        k: v for k, v in before.items() if k != "zarr.json"
    }
    again = xr.open_zarr(store, group="chips", decode_coords="all", consolidated=False)
    np.testing.assert_array_equal(again.mask.values, lazy.mask.values)  # blocks of 2 chips == blocks of 3
    np.testing.assert_allclose(got.probabilities.values, lazy.probabilities.values, atol=1e-4)
    assert again.rio.crs == cube.rio.crs and again.rio.transform() == lazy.rio.transform()
    assert geoarray.open_cube(store).imagery.shape == cube.imagery.shape  # the cube still opens as it was
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        geoarray.predict_chips(cube, ckpt, store=store)
    again = geoarray.predict_chips(cube, ckpt, store=store, overwrite=True)  # blocks of 3 chips now
    tif = geoarray.export_geotiff(again.mask.isel(time=1), tmp_path / "classes.tif")
    with rasterio.open(tif) as r:
        left, _, _, top = cube.rio.bounds()
        assert r.crs == cube.rio.crs and r.shape == (6, 6) and r.nodata == 255
        # the cube's bounds truncated to whole chips (100 px -> 96 px)
        assert tuple(r.bounds) == pytest.approx((left, top - 960.0, left + 960.0, top))
        np.testing.assert_array_equal(r.read(1), lazy.mask.values[1])


def test_overlapping_chips_and_date_selection(cube, ckpt):
    out = geoarray.predict_chips(cube, ckpt, chip_size=32, stride=16, times=["2021-04-15"])
    assert out.sizes["time"] == 1 and out.sizes["y"] == (100 - 32) // 16 + 1 == 5
    ct, gt = cube.rio.transform(), out.rio.transform()
    assert gt.a == 16 * ct.a and gt.c == ct.c + 8 * ct.a  # cells are the 16-px squares at chip centres
    assert out.x.values[0] == pytest.approx(ct.c + 16 * ct.a)  # centre of the first 32-px chip
    p = by_hand(cube, geoarray.load_checkpoint(ckpt), 1, 16 * 2, 16 * 3, 32)
    np.testing.assert_allclose(out.probabilities.values[0, :, 2, 3], p, atol=1e-4)


def test_invalid_chips_are_nodata(cube, ckpt):
    v = cube.valid.values.copy()
    v[0, :16, :36] = False  # chips (0, 0) and (0, 1) invalid on date 0, chip (0, 2) a quarter invalid
    out = geoarray.predict_chips(cube.assign(valid=(("time", "y", "x"), v)), ckpt)
    m = out.mask.values
    assert m[0, 0, 0] == m[0, 0, 1] == 255 and m[0, 0, 2] != 255 and (m[1] != 255).all()
    assert np.isnan(out.probabilities.values[0, :, 0, :2]).all()


def test_chip_encoder_writes_features(tmp_path, cube):
    ck = make_checkpoint(
        tmp_path / "enc.safetensors", "resnet18", task="vicreg", num_classes=0, width=4, seed=1
    )  # a VICReg encoder: the pooled embedding, 8 x width
    out = geoarray.predict_chips(cube, ck, chip_size=32)
    assert out.features.dims == ("time", "feature", "y", "x") and out.sizes["feature"] == 32
    loaded = geoarray.load_checkpoint(ck)
    for t, i, j in [(0, 1, 0), (1, 2, 1)]:
        x = cube.imagery.isel(time=t, y=slice(32 * i, 32 * i + 32), x=slice(32 * j, 32 * j + 32)).values
        z = (x - np.asarray(loaded.meta["input"]["mean"])[:, None, None]) / np.asarray(
            loaded.meta["input"]["std"]
        )[:, None, None]
        with torch.no_grad():
            f = loaded.model(torch.from_numpy(np.nan_to_num(z).astype(np.float32))[None])[0].numpy()
        np.testing.assert_allclose(out.features.values[t, :, i, j], f, atol=1e-4)


# -- bad input -----------------------------------------------------------------------------------------------
def test_predict_points_chip_models_to_predict_chips(cube, ckpt):
    with pytest.raises(PredictError, match=r"chip classifier.*predict_chips"):
        geoarray.predict(cube, ckpt)


def test_pixel_models_are_refused(tmp_path, cube):
    ck = make_checkpoint(tmp_path / "u.safetensors", num_classes=2, width=4, depth=2)
    with pytest.raises(PredictError, match=r"per-pixel outputs.*geoarray.predict"):
        geoarray.predict_chips(cube, ck)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"chip_size": 128}, r"chip_size=128 does not fit the cube \(100 x 100 px\)"),
        ({"stride": 0}, "stride=0"),
        ({"times": [5]}, "time index 5 is out of range"),
        ({"times": ["2030-01-01"]}, "matches 0 dates"),
        ({"outputs": ["features"]}, r"makes \['probabilities', 'mask'\]"),
        ({"min_valid": 2}, "min_valid=2"),
        ({"group": "../x"}, "group='../x'"),
    ],
)
def test_bad_options(cube, ckpt, kw, match):
    with pytest.raises(PredictError, match=match):
        geoarray.predict_chips(cube, ckpt, **kw)


def test_missing_band(cube, ckpt):
    with pytest.raises(BandError, match="lacks band"):
        geoarray.predict_chips(cube.sel(band=["blue", "green", "red"]), ckpt)


def test_store_root_and_foreign_groups_are_not_overwritten(tmp_path, cube, ckpt):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    with pytest.raises(StoreError, match="group='chips'"):
        geoarray.predict_chips(cube, ckpt, store=store, group=None)
    with pytest.raises(StoreExistsError, match="not written by predict_chips"):
        geoarray.predict_chips(cube, ckpt, store=store, group="imagery", overwrite=True)
    assert geoarray.open_cube(store).imagery.shape == cube.imagery.shape
    own = geoarray.predict_chips(cube, ckpt, store=tmp_path / "own.zarr", group=None)  # a new store: its root
    assert own.mask.shape == (2, 6, 6)


def test_cli_predict_writes_a_chip_grid_for_chip_checkpoints(tmp_path, cube, ckpt):
    from typer.testing import CliRunner

    from geoarray.cli import app

    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    r = CliRunner().invoke(app, ["predict", str(store), "--ckpt", str(ckpt), "--group", "cls"])
    assert r.exit_code == 0, r.output
    assert "to group 'cls'" in r.output and "chips of 16 px" in r.output
    got = xr.open_zarr(store, group="cls", decode_coords="all", consolidated=False)
    np.testing.assert_array_equal(got.mask.values, geoarray.predict_chips(cube, ckpt).mask.values)
