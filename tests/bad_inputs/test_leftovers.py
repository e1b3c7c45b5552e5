"""The last bad inputs of the real-data hunt (FINDINGS #10, #16, #32, #47-#50, #76, #77, #86, #92, #93).

Each was a raw Python/torch error, a dead end, or a silent acceptance before; now each is refused up front
with a GeoArrayError (a one-line message and exit code 2 on the CLI) that says what was found and expected,
or (#32, #49, #76) simply works.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import make_checkpoint, write_tif
from helpers import raise_if_dask_computes, write_west_east_regions
from rasterio.transform import from_origin
from typer.testing import CliRunner

import geoarray
from geoarray.chips import ChipStream, plan_chips
from geoarray.cli import app
from geoarray.datasets import synthetic_cube
from geoarray.errors import ModelError, OutputPathError, PredictError, RasterError, TrainError
from geoarray.models import create_model

runner = CliRunner()
CLASSES = ["water", "forest", "field", "urban", "new_building"]
SEG = {"task": "segmentation", "model_kwargs": {"width": 4, "depth": 2}, "chip_size": 32, "epochs": 1}
FAST = {"batch_size": 4, "progress": False, "steps_per_epoch": 1}


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=96, n_times=2, seed=4, chunks=48)


@pytest.fixture(scope="module")
def store(cube, tmp_path_factory):
    """The cube in a real Zarr store, as `geoarray ingest` writes it (time chunks of 1)."""
    path = tmp_path_factory.mktemp("store") / "c.zarr"
    geoarray.write_cube(cube, path, chunk=48)
    return path


# -- #10: label ids beyond --classes were written, and only `fit` refused them ---------------------------
def _label_files(tmp_path, labels):
    img = np.random.default_rng(0).integers(1, 200, size=(3, 40, 50), dtype=np.uint8)
    tr = from_origin(500_000.0, 5_001_000.0, 10.0, 10.0)
    write_tif(tmp_path / "img.tif", img, transform=tr)
    write_tif(tmp_path / "lab.tif", labels, transform=tr, nodata=255)
    return tmp_path / "img.tif", tmp_path / "lab.tif"


def _ids(dtype=np.uint8, top=2, low=0):
    lab = np.zeros((40, 50), dtype=dtype)
    lab[:, 20:] = 1
    lab[30:, :] = top
    lab[0, 0] = low
    lab[39, 49] = 255  # nodata
    return lab


@pytest.mark.parametrize(
    ("labels", "classes", "message"),
    [
        (_ids(), ["bg", "veg"], r"holds class id 2, but classes names only 2: \['bg', 'veg'\] \(ids 0..1\)"),
        (
            _ids(np.int16, low=-3),
            ["a", "b", "c"],
            r"holds the negative class id -3; expected ids 0, 1, \.\.\.",
        ),
    ],
    ids=["id-beyond-classes", "negative-id"],
)
def test_read_labels_refuses_ids_its_classes_cannot_name(tmp_path, labels, classes, message):
    img, lab = _label_files(tmp_path, labels)
    like = geoarray.from_geotiff([img], times=["2021-05-01"])
    with pytest.raises(RasterError, match=message):
        geoarray.read_labels(lab, like, classes=classes)
    ok = geoarray.read_labels(lab, like, classes=["bg", "veg", "water"]) if labels.min() >= 0 else None
    assert ok is None or ok.attrs["classes"] == ["bg", "veg", "water"]


def test_ingest_refuses_classes_shorter_than_the_label_ids_before_writing(tmp_path):
    img, lab = _label_files(tmp_path, _ids())
    out = tmp_path / "j.zarr"
    args = ["ingest", "geotiff", str(img), "-o", str(out), "--times", "2021-05-01", "--labels", str(lab)]
    r = runner.invoke(app, [*args, "--classes", "bg,veg"])
    assert r.exit_code == 2 and "holds class id 2" in r.output and "--label-nodata" in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()
    r = runner.invoke(app, [*args, "--classes", "bg,veg", "--label-nodata", "2"])  # the fix it names
    assert r.exit_code == 0, r.output


# -- #16, #47: model hparams of the wrong type or size failed inside torch ------------------------------
@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("unet", {"width": "abc"}, r"width='abc' \(str\); expected an integer >= 1, e.g. width=32"),
        ("unet", {"width": 0}, r"width=0; expected an integer >= 1"),
        ("unet", {"depth": -1}, r"depth=-1; expected 2..7"),
        ("unet", {"depth": 2.0}, r"depth=2.0; expected an integer, e.g. depth=5"),
        ("pixel_cnn", {"depth": 0}, r"depth=0; expected an integer >= 1 \(convolution layers\)"),
        ("unet", {"width": 2.5}, r"width=2.5; expected an integer"),
        ("unet", {"num_classes": 0}, r"num_classes=0; expected >= 1 \(one output map per class\)"),
        ("unet", {"dropout": 1.5}, r"dropout=1.5; expected a probability 0 <= p < 1"),
        ("resnet18", {"width": -8}, r"width=-8; expected an integer >= 1"),
        ("pixel_transformer", {"nhead": 5}, r"d_model=64 is not a multiple of nhead=5"),
        ("attention_unet", {"encoding_dim": 3}, r"encoding_dim=3; expected an even integer"),
        ("res_unet", {"encoder": 18}, r"encoder=18 \(int\); expected a string"),
    ],
)
def test_create_model_refuses_bad_hparams(name, hparams, message):
    with pytest.raises(ModelError, match=message):
        create_model(name, in_channels=3, **hparams)


def test_create_model_keeps_good_hparams_as_python_numbers():
    m = create_model("resnet18", in_channels=np.int64(3), num_classes=0, width=np.int64(4), dropout=0)
    assert m.hparams == {"in_channels": 3, "num_classes": 0, "width": 4, "dropout": 0.0}
    assert all(type(v) in (int, float) for v in m.hparams.values())  # JSON-able in the checkpoint


@pytest.mark.parametrize(
    ("model_kwargs", "message"),
    [
        ({"width": 0, "depth": 3}, r"width=0; expected an integer >= 1"),
        ({"width": 8, "depth": -1}, r"depth=-1; expected 2..7"),
        ({"width": "abc"}, r"width='abc' \(str\); expected an integer >= 1"),
    ],
)
def test_fit_refuses_bad_hparams_before_any_work(cube, tmp_path, model_kwargs, message):
    untouchable = (
        cube.copy()
    )  # labels that fail if anything reads them (fit's label pass picks its scheduler)
    untouchable["labels"] = cube.labels.copy(
        data=cube.labels.data.map_blocks(_never_read, dtype=cube.labels.dtype)
    )
    with raise_if_dask_computes(0), pytest.raises(ModelError, match=message):
        geoarray.fit(
            untouchable, **{**SEG, "model_kwargs": model_kwargs}, out=str(tmp_path / "m.safetensors"), **FAST
        )


def _never_read(block):
    raise AssertionError("the labels were read before the options were checked")


def test_cli_fit_model_kw_that_is_not_a_number(store, tmp_path):
    out = tmp_path / "f.safetensors"
    r = runner.invoke(app, ["fit", str(store), "-o", str(out), "--model-kw", "width=abc", "--epochs", "1"])
    assert r.exit_code == 2 and "width='abc' (str); expected an integer >= 1" in r.output, r.output
    assert "string formatting" not in r.output and not out.exists()


# -- #48, #49, #50: fit options ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"labels": "imagery"},
            r"labels 'imagery' have dims \('time', 'band', 'y', 'x'\); expected class ids",
        ),
        ({"times": ["2019-01-01"]}, r"times item '2019-01-01' is not a date of the cube; expected one of "),
        ({"times": [1.5]}, r"times item 1.5 is neither a time index nor a date"),
        ({"times": [5]}, r"times index 5 is out of range for a cube with 2 dates; expected -2..1"),
        ({"class_weights": [1, -2, 1, 1, 1]}, r"class_weights=\[1.0, -2.0, 1.0, 1.0, 1.0\]; expected finite"),
    ],
    ids=["labels-imagery", "times-unknown-date", "times-float", "times-out-of-range", "negative-weight"],
)
def test_fit_refuses_bad_options(cube, tmp_path, options, message):
    with pytest.raises(TrainError, match=message):
        geoarray.fit(cube, **SEG, out=str(tmp_path / "m.safetensors"), **FAST, **options)
    assert not (tmp_path / "m.safetensors").exists()


def test_times_take_dates_of_the_cube(cube, tmp_path):
    dates = [str(d)[:10] for d in cube["time"].values]
    assert plan_chips(cube, chip_size=32, times=[dates[1]]).train[0].t == (1,)
    assert plan_chips(cube, chip_size=32, times=[dates[1], 0]).train[0].t == (1, 0)
    assert plan_chips(cube, chip_size=32, times=[np.datetime64(dates[0])]).train[0].t == (0,)
    out = geoarray.fit(cube, **SEG, out=str(tmp_path / "d.safetensors"), **FAST, times=[dates[1]])
    assert out.exists()


# -- #32: a last batch of one chip met BatchNorm --------------------------------------------------------
def _stream(cube, windows, plan, **kw):
    n = cube.sizes["band"]
    bands = list(cube.band.values)
    return ChipStream(cube, windows, plan, bands=bands, mean=[0.0] * n, std=[1.0] * n, labels=None, **kw)


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [(5, 4, [5]), (7, 3, [3, 4]), (8, 3, [3, 3, 2]), (1, 4, []), (3, 4, [3]), (5, 1, [1] * 5)],
)
def test_training_stream_never_yields_a_batch_of_one(cube, n, batch_size, sizes):
    plan = plan_chips(cube, chip_size=32, val_fraction=0.0, labels=None)
    assert len(plan.train) >= n
    for shuffle in (True, False):
        s = _stream(cube, plan.train[:n], plan, batch_size=batch_size, shuffle=shuffle, min_batch=2)
        got = [len(b.x) for b in s]
        assert sorted(got) == sorted(sizes) and len(s) == len(got)  # len() = the steps the loop will run
    plain = _stream(cube, plan.train[:n], plan, batch_size=batch_size, shuffle=False)
    assert sum(len(b.x) for b in plain) == n  # without min_batch nothing changes


@pytest.fixture(scope="module")
def regions(cube, tmp_path_factory):
    """Two regions (west, east) covering the cube, as a real GeoJSON file in lon/lat."""
    return write_west_east_regions(cube, tmp_path_factory.mktemp("regions") / "regions.geojson", split=48)


def test_resnet_trains_when_the_last_batch_would_hold_one_chip(cube, regions, tmp_path):
    from geoarray.training import FitConfig
    from geoarray.training.prepare import prepare

    opts = dict(task="classification", model="resnet18", model_kwargs={"width": 4}, chip_size=32, epochs=1)
    opts.update(regions=regions, region_property="k", progress=False, out=str(tmp_path / "r.safetensors"))
    n = len(prepare(cube, FitConfig(**opts)).plan.train)
    assert n >= 3
    # n - 1 per batch: one full batch and one chip left over; resnet18 pools a 32 px chip down to 1x1
    ckpt = geoarray.fit(cube, **{**opts, "batch_size": n - 1})
    assert ckpt.exists()
    with pytest.raises(TrainError, match=r"batch_size=1: 'resnet18' normalises its features with BatchNorm"):
        geoarray.fit(cube, **{**opts, "batch_size": 1, "out": str(tmp_path / "one.safetensors")})


# -- #76, #77: whole-series models in predict ---------------------------------------------------------
def test_cli_predict_runs_a_pixel_model_on_a_store_with_time_chunks_of_one(store, tmp_path):
    ckpt = make_checkpoint(
        tmp_path / "p.safetensors",
        "pixel_cnn",
        task="pixel_classification",
        num_classes=5,
        out_channels=8,
        width=8,
        classes=CLASSES,
    )
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    assert geoarray.open_cube(copy).imagery.chunks[0] == (1, 1)
    r = runner.invoke(app, ["predict", str(copy), "-c", str(ckpt)])
    assert r.exit_code == 0, r.output
    got = geoarray.open_cube(copy)
    want = geoarray.predict(geoarray.open_cube(store).chunk(time=-1), ckpt)
    assert got["mask"].dims == ("y", "x")
    np.testing.assert_allclose(got.probabilities.values, want.probabilities.values, atol=1e-5)


def test_predict_refuses_a_pixel_mlp_built_for_other_dates_before_any_work(cube, tmp_path):
    ckpt = make_checkpoint(
        tmp_path / "m.safetensors",
        "pixel_mlp",
        task="pixel_classification",
        num_classes=5,
        num_timesteps=3,
        out_channels=8,
        hidden=8,
        classes=CLASSES,
    )
    with (
        raise_if_dask_computes(0),
        pytest.raises(
            PredictError, match=r"'pixel_mlp' model built for 3 dates \(num_timesteps=3\); the cube has 2"
        ),
    ):
        geoarray.predict(cube.chunk(time=-1), ckpt)


# -- #86, #92, #93: output paths of evaluate and export --------------------------------------------------
@pytest.fixture(scope="module")
def predicted(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    copy = d / "p.zarr"
    shutil.copytree(store, copy)
    ckpt = make_checkpoint(d / "u.safetensors", num_classes=5, classes=CLASSES, width=4, depth=2)
    geoarray.predict(geoarray.open_cube(copy), ckpt, store=copy)
    return copy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "{store}", "--json", "{dir}"], r"is a directory; expected the path of a JSON file"),
        (
            ["export", "{store}", "mask", "-o", "{dir}", "--time", "0"],
            r"is a directory; expected the path of a",
        ),
        (
            ["export", "{store}", "mask", "-o", "{tmp}/m.png", "--time", "0"],
            r"ends '.png', but a Cloud-Optimized",
        ),
        (["export", "{store}", "mask", "-o", "{tmp}/f.txt/m.tif", "--time", "0"], r"which is a file"),
    ],
    ids=["evaluate-json-dir", "export-dir", "export-png", "export-under-a-file"],
)
def test_cli_output_paths_that_cannot_be_written(predicted, tmp_path, args, message):
    (tmp_path / "dir").mkdir()
    (tmp_path / "f.txt").write_text("a file")
    argv = [a.format(store=predicted, dir=tmp_path / "dir", tmp=tmp_path) for a in args]
    r = runner.invoke(app, argv)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output  # one line, not the table and then an error
    assert re.search(message, r.output.replace("\n", " ")), r.output
    assert not (tmp_path / "m.png").exists() and list((tmp_path / "dir").iterdir()) == []


def test_export_and_evaluate_write_good_paths(predicted, tmp_path):
    r = runner.invoke(app, ["evaluate", str(predicted), "--json", str(tmp_path / "new" / "s.json")])
    assert r.exit_code == 0 and json.loads((tmp_path / "new" / "s.json").read_text())["accuracy"] >= 0
    with pytest.raises(OutputPathError, match=r"has no suffix"):
        geoarray.export_geotiff(geoarray.open_cube(predicted)["mask"].isel(time=0), tmp_path / "mask")
    out = geoarray.export_geotiff(geoarray.open_cube(predicted)["mask"].isel(time=0), tmp_path / "m.TIFF")
    assert out.exists()
