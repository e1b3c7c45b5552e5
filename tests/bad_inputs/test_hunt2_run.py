"""The second real-data hunt on the run side (predict, resume, checkpoints, fit's URLs, the run commands).

Each test is one bad row of tests/bad_inputs/HUNT-2026-11-30-run.md; its comment says what happened before.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import make_checkpoint, tree_digest

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import GeoArrayWarning, StoreExistsError

CLASSES = ["water", "forest", "field", "urban", "new_building"]


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=(96, 80), n_times=2, seed=5)


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3, gain=3.0)


def _cut_short(store):
    """What a killed run leaves: every other chunk missing, the outputs marked partial."""
    for var in ("mask", "probabilities"):
        for f in sorted(p for p in (store / var / "c").rglob("*") if p.is_file())[::2]:
            f.unlink()
        zarr.open_array(str(store / var), mode="r+").attrs["geoarray_complete"] = False


def test_a_resume_with_another_halo_is_refused(tmp_path, cube, ckpt):
    # row 8: the resumed run wrote its chunks with halo=4 beside the first run's halo=auto chunks and marked the
    # outputs complete: seams at block edges (probabilities off by up to 5e-3 on the L7 cube), no error
    store = tmp_path / "p.zarr"
    geoarray.write_cube(cube, store, chunk=32)
    out = geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    full = tree_digest(store)
    halo = out.probabilities.attrs["halo"]
    assert halo == geoarray.load_checkpoint(ckpt).meta["halo"] > 2
    _cut_short(store)
    cut = tree_digest(store)
    with (
        pytest.warns(GeoArrayWarning, match="seams can show"),  # halo 4 is below the model's receptive field
        pytest.raises(StoreExistsError, match=rf"made with halo={halo}; this run asks for halo=4.*Resume with halo={halo}"),
    ):
        geoarray.predict(geoarray.open_cube(store), ckpt, store=store, halo=4)
    assert tree_digest(store) == cut  # refused before anything changed
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store, halo=halo)  # the same halo, spelled out
    assert tree_digest(store) == full


def _dn_model(path, bands):
    """A linear model trained on 8-bit digital numbers (mean 70, std 20), as on the Landsat-7 sample."""
    import torch

    from geoarray.checkpoint import save_checkpoint
    from geoarray.models import create_model

    torch.manual_seed(0)
    model = create_model("linear", in_channels=len(bands), num_classes=len(CLASSES))
    n = len(bands)
    return save_checkpoint(path, model, task="segmentation", bands=list(bands), mean=[70.0] * n, std=[20.0] * n,
                           classes=CLASSES)  # fmt: skip


def test_reflectances_for_a_model_trained_on_digital_numbers_warn(tmp_path, cube):
    # row 3: 0-1 reflectances sit only ~3.5 std below DN statistics, under the 10-std check: a map of one class,
    # no word (the first hunt's row 67)
    ck = _dn_model(tmp_path / "dn.safetensors", [str(b) for b in cube.band.values])
    with pytest.warns(geoarray.errors.GeoArrayWarning, match=r"under 1/10 of the training data's mean.*0-1 reflectances"):
        geoarray.predict(cube, ck).mask.load()
    dn = cube.assign(imagery=(cube.imagery.fillna(0).clip(0, 1) * 255).astype("uint8"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", geoarray.errors.GeoArrayWarning)
        geoarray.predict(dn, ck).mask.load()  # the training scale: no warning
        zeros = dn.assign(imagery=dn.imagery * 0)  # a constant fill of 0 is not a scale
        geoarray.predict(zeros, ck).mask.load()


def test_fit_reads_an_init_url_with_its_storage_options(s3, tmp_path):
    # row 31: fit(init="s3://…", storage_options=…) was refused ("out, resume and log_dir are local paths"), and
    # without storage_options the init was read with the default AWS endpoint; the CLI's --init (a Path) turned
    # "s3://b/k" into "s3:/b/k"
    from geoarray.checkpoint import file_sha256, load_checkpoint

    cube = synthetic_cube(size=(64, 64), n_times=2, seed=5)
    bands = [str(b) for b in cube.band.values]
    enc = make_checkpoint(tmp_path / "enc.safetensors", "pixel_cnn", bands=bands, task="barlow_twins",
                          out_channels=8, width=8, depth=2)  # fmt: skip
    url = f"s3://{s3.bucket(versioned=False)}/enc.safetensors"
    s3.fs.put(str(enc), url)
    out = geoarray.fit(cube, task="linear_probe", init=url, storage_options=s3.storage_options, epochs=1,
                       steps_per_epoch=1, chip_size=16, batch_size=64, out=tmp_path / "lp.safetensors", progress=False)  # fmt: skip
    training = load_checkpoint(out).meta["training"]
    assert training["init"] == url and training["init_sha256"] == file_sha256(enc)


def test_a_dead_endpoint_is_not_called_a_missing_bucket(tmp_path, cube):
    # row 30: write_cube to an endpoint nobody listens on said "the bucket 'bkt' ... does not exist"
    so = {"key": "x", "secret": "y", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
          "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}  # fmt: skip
    with pytest.raises(geoarray.errors.StoreError, match=r"cannot reach 's3://bkt/c.zarr' \(EndpointConnectionError"):
        geoarray.write_cube(cube, "s3://bkt/c.zarr", storage_options=so)


def test_demo_refuses_before_any_work(tmp_path, cube):
    from typer.testing import CliRunner

    from geoarray.cli import app

    runner = CliRunner()
    # row 41: --out a file gave a FileExistsError traceback
    (tmp_path / "a.tif").write_bytes(b"x")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "a.tif"), "--epochs", "1"])
    assert r.exit_code == 2 and "is a file; expected a folder" in r.output
    # row 42: --epochs 0 was refused only after the cube was built
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--epochs", "0"])
    assert r.exit_code == 2 and "--epochs 0; expected a positive integer" in r.output
    assert not (tmp_path / "d").exists()
    # row 43: the demo deleted <out>/sample.zarr whatever it held, e.g. the user's own cube
    mine = tmp_path / "site" / "sample.zarr"
    geoarray.write_cube(cube, mine)
    before = tree_digest(mine)
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "site"), "--epochs", "1"])
    assert r.exit_code == 2 and "is not the demo's sample cube" in r.output
    assert tree_digest(mine) == before
    from geoarray.demo import run_demo  # the library function checks too, not only the command

    with pytest.raises(StoreExistsError, match="is not the demo's sample cube"):
        run_demo(tmp_path / "site", epochs=1)
    assert tree_digest(mine) == before


@pytest.mark.parametrize("key", ["nodata", "_FillValue"])
def test_a_declared_nodata_without_valid_gives_nodata_outputs(tmp_path, cube, ckpt, key):
    # row 12: a cube built from rioxarray.open_rasterio carries the file's nodata only as an attr; predict ran
    # the fill through the model and wrote confident classes there
    img = (cube.imagery.fillna(0.5).clip(0, 1) * 200 + 20).astype("uint8").values  # no 0 but the fill
    img[:, :, 10:30, 20:40] = 0  # the fill, in every band
    img[:, 1, 50:60, 50:60] = 0  # one band at 0 is data, not fill
    plain = cube.drop_vars("valid").assign(imagery=(cube.imagery.dims, img))
    declared = plain.copy()
    declared["imagery"].attrs[key] = 0
    store = tmp_path / "d.zarr"
    geoarray.write_cube(declared, store, chunk=32)
    ck = _dn_model(tmp_path / "dn.safetensors", [str(b) for b in cube.band.values])
    ref = geoarray.predict(plain, ck)
    # from the store with halo=0, tasks read their windows from Zarr directly, past xarray's decoding of a
    # _FillValue to NaN (which also masks a pixel whose one band holds the fill: CF decodes band by band)
    stored = geoarray.predict(geoarray.open_cube(store), ck, halo=0)
    for out in (geoarray.predict(declared, ck), stored):
        mask, prob = out.mask.values, out.probabilities.values
        assert (mask[:, 10:30, 20:40] == 255).all() and np.isnan(prob[:, :, 10:30, 20:40]).all()
        keep = np.ones(mask.shape, bool)
        keep[:, 10:30, 20:40] = False
        if out is stored and key == "_FillValue":
            keep[:, 50:60, 50:60] = False
        assert (mask[keep] != 255).all() and np.array_equal(mask[keep], ref.mask.values[keep])


def test_stac_features_cli_refuses_a_chunk_below_one(tmp_path):
    # row 44: `geoarray stac-features ... --chunk 0` died in a ZeroDivisionError (the API's own check is left to
    # stac_features.py)
    from stac_items import make_catalog, make_ckpt
    from typer.testing import CliRunner

    from geoarray.cli import app

    items = make_catalog(tmp_path / "cat", size=32)
    ck = make_ckpt(tmp_path / "m.safetensors")
    args = ["stac-features", str(items), "-c", str(ck), "-o", str(tmp_path / "o.zarr"), "--crs", "EPSG:32633"]
    r = CliRunner().invoke(app, [*args, "--chunk", "0"])
    assert r.exit_code == 2 and "--chunk 0; expected a whole number of pixels >= 1" in r.output, r.output
    assert not (tmp_path / "o.zarr").exists()


def test_fit_masks_a_declared_nodata_like_predict(tmp_path, cube):
    # the lead's follow-up to row 12: fit took a declared nodata (an attr, no `valid`) as data, so the band
    # statistics and the chips counted the fill, and the model was trained on what predict now masks
    import warnings

    img = (cube.imagery.fillna(0.5).clip(0, 1) * 200 + 20).astype("uint8").values
    img[:, :, 8:24, 8:40] = 0  # the fill in every band: 7 % of the pixels
    declared = cube.drop_vars("valid").assign(imagery=(cube.imagery.dims, img))
    declared["imagery"].attrs["nodata"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", geoarray.errors.GeoArrayWarning)  # no "undeclared nodata of 0" warning
        ck = geoarray.fit(declared, task="segmentation", model="unet", model_kwargs={"width": 4, "depth": 2},
                          chip_size=16, epochs=1, batch_size=4, out=str(tmp_path / "m.safetensors"), seed=0)  # fmt: skip
    mean = geoarray.load_checkpoint(ck).meta["input"]["mean"]
    data = np.moveaxis(img, 1, -1)[(img != 0).any(1)].astype(np.float64)  # (pixels, bands) off the fill
    np.testing.assert_allclose(mean, data.mean(0), rtol=1e-6)


def test_predict_into_a_store_of_outputs_only(tmp_path, cube, ckpt):
    # found by the lead: predict(store=) into a store that holds the cube's grid but no imagery (as stac_features
    # makes) wrote every output, then raised "not a geoarray cube" while reopening it
    import xarray as xr

    store = tmp_path / "grid.zarr"
    xr.Dataset(coords={c: cube[c] for c in ("time", "y", "x", "spatial_ref")}).to_zarr(store, zarr_format=3)
    out = geoarray.predict(cube.chunk(y=48, x=40), ckpt, store=store)
    assert "imagery" not in out and out["mask"].attrs["geoarray_complete"] is True
    np.testing.assert_array_equal(out["mask"].values, geoarray.predict(cube, ckpt)["mask"].values)
