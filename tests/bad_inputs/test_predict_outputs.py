"""Bad inputs around predict's outputs, evaluate, export and info, each on a real Zarr store (issue 8).

Every case here gave a silent wrong answer or an unhelpful error before: the comment on each says which.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import make_checkpoint, tree_digest, write_tif
from typer.testing import CliRunner

import geoarray
from geoarray.cli import app
from geoarray.datasets import synthetic_cube
from geoarray.errors import GeoArrayWarning, PredictError, StoreExistsError

CLASSES = ["water", "forest", "field", "urban", "new_building"]
runner = CliRunner()


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=(96, 80), n_times=2, seed=5)


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)


def _partial_store(tmp_path, cube, ckpt):
    """A store whose predict run was cut short: every other chunk missing, outputs marked partial."""
    store = tmp_path / "p.zarr"
    geoarray.write_cube(cube, store, chunk=32)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    for var in ("mask", "probabilities"):
        for f in sorted(p for p in (store / var / "c").rglob("*") if p.is_file())[::2]:
            f.unlink()
        zarr.open_array(str(store / var), mode="r+").attrs["geoarray_complete"] = False
    return store


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        # the blocks were keyed on the store's 32 px chunks: the run skipped 64 px blocks whose first chunk
        # existed and marked the outputs complete with holes
        (
            "other chunks",
            {"chunks": {"time": 1, "y": 64, "x": 64}},
            r"chunks.*\(1, 5, 32, 32\).*\(1, 5, 64, 64\)",
        ),
        # float16 values were cast into the float32 partial output: a mix of precisions, no error
        ("other dtype", {"dtype": "float16"}, r"'float32'.*'float16'.*options of the first run"),
    ],
)
def test_a_resume_must_write_the_same_arrays(tmp_path, cube, ckpt, case, kwargs, message):
    store = _partial_store(tmp_path, cube, ckpt)
    before = tree_digest(store)
    chunks = kwargs.pop("chunks", None)
    with pytest.raises(StoreExistsError, match=message):
        geoarray.predict(geoarray.open_cube(store, chunks=chunks), ckpt, store=store, **kwargs)
    assert tree_digest(store) == before


def test_overwrite_never_deletes_a_variable_predict_did_not_write(tmp_path, cube, ckpt):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube.assign(mask=cube.valid.astype("uint8")), store)  # the user's own cloud 'mask'
    before = tree_digest(store)
    with pytest.raises(StoreExistsError, match=r"'mask' exists .* not written by predict.*prefix="):
        geoarray.predict(geoarray.open_cube(store), ckpt, store=store, overwrite=True)  # deleted it before
    assert tree_digest(store) == before


@pytest.mark.parametrize("prefix", ["a/", "../up_", " ", ".hidden_", "__x"])
def test_a_prefix_that_is_not_a_name(tmp_path, cube, ckpt, prefix):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    before = tree_digest(store)
    # "a/" wrote the outputs into a nested Zarr group that open_cube never shows
    with pytest.raises(PredictError, match=r"prefix=.*expected a string of ASCII letters"):
        geoarray.predict(geoarray.open_cube(store), ckpt, store=store, prefix=prefix)
    assert tree_digest(store) == before


def test_input_on_another_scale_than_the_training_data_warns(cube, ckpt):
    # the model was trained on 0-1 reflectances (mean 0.3, std 0.2); uint16 DNs gave confident garbage quietly
    dn = cube.assign(imagery=(cube.imagery.fillna(0).clip(0, 1) * 10_000).astype("uint16"))
    with pytest.warns(GeoArrayWarning, match=r"more than 10 standard deviations.*Rescale"):
        geoarray.predict(dn, ckpt)["mask"].compute()


def test_export_time_of_an_output_without_dates(tmp_path, cube):
    pixel = make_checkpoint(
        tmp_path / "p.safetensors",
        "pixel_transformer",
        task="pixel_classification",
        num_classes=5,
        out_channels=8,
        classes=CLASSES,
    )
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    geoarray.predict(geoarray.open_cube(store, chunks={"time": -1}), pixel, store=store)
    r = runner.invoke(app, ["export", str(store), "mask", "-o", str(tmp_path / "m.tif"), "--time", "1"])
    assert r.exit_code == 2 and "has no time dim" in r.output  # --time was ignored silently
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("command", [["info"], ["evaluate"], ["export", "mask", "-o", "x.tif"]])
def test_a_geotiff_given_as_the_store(tmp_path, command):
    tif = write_tif(tmp_path / "scene.tif", np.zeros((2, 8, 8), np.uint16))
    r = runner.invoke(app, [command[0], str(tif), *command[1:]])
    # was "not a readable Zarr store (GroupNotFoundError: No group found in store ...)"
    assert r.exit_code == 2 and "is a file; expected a Zarr store" in r.output
    assert "geoarray ingest geotiff" in r.output


def test_cli_prefix_error_names_the_flag(tmp_path, cube, ckpt):
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    r = runner.invoke(app, ["predict", str(store), "-c", str(ckpt), "--prefix", "a/"])
    assert r.exit_code == 2 and "--prefix a/; expected a string of ASCII letters" in r.output


def test_partial_output_of_an_older_geoarray_is_never_scored_or_exported(tmp_path, cube, ckpt):
    import json

    store = _partial_store(tmp_path, cube, ckpt)
    meta = store / "mask" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["fill_value"] = 0  # what geoarray wrote before the fill value was the nodata: holes read as class 0
    meta.write_text(json.dumps(doc))
    r = runner.invoke(app, ["evaluate", str(store), "--allow-partial"])
    assert r.exit_code == 2 and "missing chunks read as class 0" in r.output
    r = runner.invoke(
        app, ["export", str(store), "mask", "-o", str(tmp_path / "m.tif"), "--time", "0", "--allow-partial"]
    )
    assert r.exit_code == 2 and "missing chunks read as class 0" in r.output
    assert not (tmp_path / "m.tif").exists()
    assert runner.invoke(app, ["predict", str(store), "-c", str(ckpt)]).exit_code == 0  # finishing it works
    assert runner.invoke(app, ["evaluate", str(store)]).exit_code == 0
