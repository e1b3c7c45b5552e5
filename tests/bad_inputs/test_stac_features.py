"""Bad inputs to stac_features / ``geoarray stac-features``: each refused with a message that names the fix,
before the store is created or any pixel is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stac_items import BANDS, make_catalog, make_ckpt
from typer.testing import CliRunner

import geoarray
from geoarray.cli import app
from geoarray.errors import BandError, PredictError, STACError, StoreError, StoreExistsError

runner = CliRunner()
OPTS = dict(crs="EPSG:32633", resolution=20.0, chunk=32, progress=False)


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacbad")
    return {"items": make_catalog(root / "cat", size=64), "ckpt": make_ckpt(root / "m.safetensors")}


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"bands": ["red", "nir"]}, BandError, r"bands=\['red', 'nir'\] names 2 band\(s\); m.safetensors needs 3"),
        ({"bands": ["red", "green", "swir"]}, BandError, r"lack band\(s\) \['swir'\].*the checkpoint's 'nir'.*in 3 of 3"),
        ({"time": ("2023-01-01", None)}, STACError, r"keeps none of the 3 item\(s\), which are dated from 2022-04-01"),
        ({"time": ("2022-06-01", "2022-04-01")}, STACError, r"ends before it starts"),
        ({"time": ("01/04/2022", None)}, STACError, r"'01/04/2022' is not an ISO date"),
        ({"time": "2022-04-01"}, STACError, r"expected a \(start, end\) pair"),
        ({"workers": 0}, PredictError, r"workers=0; expected a positive number"),
        ({"workers": 2, "scheduler": "tcp://127.0.0.1:9"}, PredictError, r"pass one: scheduler= runs on an existing"),
        ({"precision": "fp8"}, PredictError, r"precision='fp8'; expected '32', 'bf16' or '16'"),
        ({"device": "tpu"}, PredictError, r"device='tpu' is not a torch device; expected 'auto', 'cpu'"),
        ({"outputs": ["features"]}, PredictError, r"outputs=\['features'\]; a segmentation checkpoint makes"),
    ],
)
def test_refused_before_the_store_exists(cat, tmp_path, kw, error, message):
    store = tmp_path / "f.zarr"
    with pytest.raises(error, match=message):
        geoarray.stac_features(cat["items"], cat["ckpt"], store, **{**OPTS, **kw})
    assert not store.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_fp16_on_cpu(cat, tmp_path):
    with pytest.raises(PredictError, match=r"precision='16' \(float16 autocast\) needs a CUDA GPU"):
        geoarray.stac_features(cat["items"], cat["ckpt"], tmp_path / "f.zarr", precision="16", **OPTS)
    assert not (tmp_path / "f.zarr").exists()


def test_a_store_on_another_grid_or_not_a_store(cat, tmp_path):
    other = tmp_path / "other.zarr"
    geoarray.stac_features(cat["items"], cat["ckpt"], other, **{**OPTS, "resolution": 40.0})
    before = sorted(p.name for p in other.rglob("*"))
    with pytest.raises(StoreError, match=r"'y' has (\d+) steps but the store has (\d+). Predict on"):
        geoarray.stac_features(cat["items"], cat["ckpt"], other, **OPTS)
    assert sorted(p.name for p in other.rglob("*")) == before  # untouched
    folder = tmp_path / "notzarr"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(StoreError, match="not a Zarr store"):
        geoarray.stac_features(cat["items"], cat["ckpt"], folder, **OPTS)


def test_a_finished_run_needs_overwrite(cat, tmp_path):
    store = tmp_path / "f.zarr"
    first = geoarray.stac_features(cat["items"], cat["ckpt"], store, **OPTS)["mask"].values
    with pytest.raises(StoreExistsError, match="pass overwrite=True"):
        geoarray.stac_features(cat["items"], cat["ckpt"], store, **OPTS)
    r = runner.invoke(app, ["stac-features", str(cat["items"]), "-c", str(cat["ckpt"]), "-o", str(store),
                            "--crs", "EPSG:32633", "--resolution", "20", "--chunk", "32"])  # fmt: skip
    assert r.exit_code == 2 and "pass --overwrite to replace it" in r.output
    again = geoarray.stac_features(cat["items"], cat["ckpt"], store, overwrite=True, **OPTS)
    np.testing.assert_array_equal(again["mask"].values, first)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "2022-04-01"], r"--time '2022-04-01'; expected START/END"),
        (["--bbox", "1,2,3"], r"--bbox '1,2,3' has 3 numbers"),
        (["--engine", "gdal"], r"--engine 'gdal'; expected odc or stackstac"),
        (["--bands", "red,,nir"], r"--bands 'red,,nir' has an empty item"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], r"--scheduler tcp://127.0.0.1:9 and --workers 2; pass one"),
    ],
)
def test_cli_options(cat, tmp_path, args, message):
    r = runner.invoke(
        app, ["stac-features", str(cat["items"]), "-c", str(cat["ckpt"]), "-o", str(tmp_path / "f.zarr"), *args]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert __import__("re").search(message, r.output), r.output
    assert not (tmp_path / "f.zarr").exists()


def test_the_items_band_names_are_listed(cat, tmp_path):
    other = make_ckpt(tmp_path / "s2.safetensors", bands=["B04", "B03", "B08"])
    with pytest.raises(BandError) as e:
        geoarray.stac_features(cat["items"], other, tmp_path / "f.zarr", **OPTS)
    msg = str(e.value)
    assert "['B03', 'B04', 'B08']" in msg and "has ['green', 'nir', 'red']" in msg and "Pass bands=" in msg
    assert BANDS == ["red", "green", "nir"]
