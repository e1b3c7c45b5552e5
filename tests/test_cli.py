from __future__ import annotations

import numpy as np
import pytest
from conftest import coded, write_tif
from typer.testing import CliRunner

import geoarray
from geoarray.cli import app

runner = CliRunner()


def test_help_on_every_command():
    for args in (
        ["--help"],
        ["info", "--help"],
        ["ingest", "--help"],
        ["ingest", "geotiff", "--help"],
        ["ingest", "stac", "--help"],
        ["demo", "--help"],
        ["probe", "--help"],
        ["stac-features", "--help"],
        ["fit", "--help"],
        ["predict", "--help"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "Usage" in r.output


def test_ingest_geotiff_then_info(tmp_path):
    write_tif(tmp_path / "a_20200105.tif", coded((2, 16, 16)), descriptions=["red", "nir"])
    write_tif(tmp_path / "b_20200205.tif", coded((2, 16, 16), 7), descriptions=["red", "nir"])
    store = tmp_path / "c.zarr"
    r = runner.invoke(
        app,
        [
            "ingest",
            "geotiff",
            str(tmp_path / "a_20200105.tif"),
            str(tmp_path / "b_20200205.tif"),
            "-o",
            str(store),
            "--sensor",
            "S2",
        ],
    )
    assert r.exit_code == 0, r.output
    ds = geoarray.open_cube(store)
    assert list(ds.band.values) == ["red", "nir"] and list(ds.sensor.values) == ["S2", "S2"]
    np.testing.assert_array_equal(ds.imagery.values[1], coded((2, 16, 16), 7))
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0
    assert "EPSG:32633" in r.output and "2020-01-05, 2020-02-05" in r.output and "red, nir" in r.output


def test_ingest_geotiff_with_labels(tmp_path):
    write_tif(tmp_path / "a_20200105.tif", coded((2, 16, 16)), descriptions=["red", "nir"])
    lab = (np.arange(16 * 16).reshape(16, 16) % 3).astype("uint8")
    write_tif(tmp_path / "lab.tif", lab, nodata=255)
    store = tmp_path / "c.zarr"
    args = ["ingest", "geotiff", str(tmp_path / "a_20200105.tif"), "-o", str(store)]
    r = runner.invoke(app, [*args, "--labels", str(tmp_path / "lab.tif"), "--classes", "a,b,c"])
    assert r.exit_code == 0, r.output
    ds = geoarray.open_cube(store)
    np.testing.assert_array_equal(ds.labels.values, lab)
    assert list(ds.labels.attrs["classes"]) == ["a", "b", "c"] and ds.labels.attrs["nodata"] == 255
    r = runner.invoke(app, [*args, "--overwrite", "--classes", "a,b"])
    assert r.exit_code != 0 and "need --labels" in r.output


def test_ingest_stac(stac_catalog, tmp_path):
    store = tmp_path / "s.zarr"
    r = runner.invoke(
        app, ["ingest", "stac", str(stac_catalog["path"]), "-o", str(store), "--bands", "red,nir"]
    )
    assert r.exit_code == 0, r.output
    assert geoarray.open_cube(store).sizes["band"] == 2


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, stac_catalog):
    r = runner.invoke(app, ["info", str(tmp_path / "missing.zarr")])
    assert r.exit_code == 2 and "error: no Zarr store" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        app,
        ["ingest", "stac", str(stac_catalog["path"]), "-o", str(tmp_path / "x.zarr"), "--bands", "red,swir"],
    )
    assert r.exit_code == 2 and "lacks the requested band" in r.output
    assert not (tmp_path / "x.zarr").exists()


def _held_out_mean_iou(output: str) -> float:
    """The mean IoU of the held-out table the demo prints (the first 'mean' row after 'held-out tiles')."""
    rest = output.split("held-out tiles", 1)[1]
    row = next(line for line in rest.splitlines() if line.startswith("mean "))
    return float(row.split()[1])


def test_demo_runs_the_whole_pipeline(tmp_path):
    from geoarray.demo import _CHIPS, held_out_scores

    r = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo"), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    ds = geoarray.open_cube(tmp_path / "demo" / "sample.zarr")
    assert ds.imagery.shape == (4, 6, 352, 349)
    assert ds["mask"].dims == ("time", "y", "x") and ds.probabilities.sizes["class"] == 4
    for f in ("overlay.png", "curves.png", "unet.safetensors", "log/metrics.csv"):
        assert (tmp_path / "demo" / f).stat().st_size > 0
    # the model learned: 2 epochs reach a held-out mean IoU of 0.53 (an untrained UNet scores 0.04), and the
    # printed score is the one the written mask gets
    printed = _held_out_mean_iou(r.output)
    assert printed >= 0.45, r.output
    held, _ = held_out_scores(ds, **_CHIPS)
    assert abs(held["mean_iou"] - printed) < 5e-4


def test_fit_and_evaluate(tmp_path):
    import json

    from geoarray.datasets import synthetic_cube

    store = tmp_path / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=128, n_times=2, seed=0), store)
    ckpt = tmp_path / "m.safetensors"
    r = runner.invoke(
        app,
        [
            "fit",
            str(store),
            "-o",
            str(ckpt),
            "--model-kw",
            "width=8",
            "--model-kw",
            "depth=3",
            "--chip-size",
            "32",
            "--epochs",
            "2",
            "--log-dir",
            str(tmp_path / "log"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "best epoch" in r.output and ckpt.exists()
    r = runner.invoke(app, ["predict", str(store), "--ckpt", str(ckpt)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(store), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert "water" in r.output and "overall accuracy" in r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert set(s["iou"]) == {"water", "forest", "field", "urban", "new_building"}
    # the scores are those of the written mask against the labels, on valid labelled pixels
    ds = geoarray.open_cube(store)
    lab = np.broadcast_to(ds.labels.values, ds["mask"].shape)
    pred = ds["mask"].values
    scored = ds.valid.values & (lab != ds.labels.attrs["nodata"]) & (pred != 255)
    p, t = pred[scored], lab[scored]
    assert s["accuracy"] == pytest.approx((p == t).mean(), abs=1e-6)
    for k, name in enumerate(s["iou"]):
        union = ((p == k) | (t == k)).sum()
        want = ((p == k) & (t == k)).sum() / union if union else None
        assert s["iou"][name] == (pytest.approx(want, abs=1e-6) if want is not None else None), name
    r = runner.invoke(app, ["fit", str(store), "-o", str(ckpt), "--model-kw", "width"])
    assert r.exit_code == 2 and "name=value" in r.output


def test_fit_barlow_twins_then_finetune_from_it_and_probe_it(tmp_path):
    from geoarray.checkpoint import read_metadata
    from geoarray.datasets import synthetic_cube

    store, bt, ft = tmp_path / "c.zarr", tmp_path / "bt.safetensors", tmp_path / "ft.safetensors"
    cube = synthetic_cube(size=96, n_times=4, seed=0, chunks=48)
    geoarray.write_cube(cube, store, chunk=48)
    small = ["--chip-size", "24", "--epochs", "1", "--batch-size", "256"]
    kws = ["--model-kw", "width=8", "--model-kw", "out_channels=8", "--task-kw", "view_dates=2"]
    r = runner.invoke(
        app,
        ["fit", str(store), "-o", str(bt), "--task", "barlow_twins", "--model", "pixel_cnn", *small, *kws],
    )
    assert r.exit_code == 0, r.output
    args = ["fit", str(store), "-o", str(ft), "--task", "finetune", "--init", str(bt), *small]
    r = runner.invoke(
        app, [*args, "--label-fraction", "0.5", "--loss", "focal", "--task-kw", "backbone_lr=1e-4"]
    )
    assert r.exit_code == 0, r.output
    meta = read_metadata(ft)
    tr = meta["training"]
    assert meta["task"] == "pixel_classification" and meta["model"]["hparams"]["width"] == 8
    assert tr["protocol"] == "finetune" and tr["label_tiles"] == max(
        1, round(0.5 * tr["labelled_train_tiles"])
    )
    # --task-kw values reach the task, parsed as JSON (a number) or kept as text
    r = runner.invoke(app, [*args, "--task-kw", "backbone_lr=-1"])
    assert r.exit_code == 2 and "backbone_lr=-1; expected a finite learning rate" in r.output
    r = runner.invoke(app, [*args, "--task-kw", "backbone_lr=fast"])
    assert r.exit_code == 2 and "backbone_lr='fast'" in r.output
    r = runner.invoke(app, [*args, "--task-kw", "backbone_lr"])
    assert r.exit_code == 2 and "--task-kw 'backbone_lr'; expected name=value" in r.output

    r = runner.invoke(
        app, ["probe", str(store), "--ckpt", str(bt), "--protocols", "knn", "--label-fractions", "0.5,1"]
    )
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].split() == ["encoder", "protocol", "label_fraction", "top1", "top5"]
    rows = [ln.split() for ln in lines[1:]]
    want = geoarray.probe(geoarray.open_cube(store), bt, protocols=["knn"], label_fractions=[0.5, 1.0])
    assert [(e, p) for e, p, *_ in rows] == list(zip(want.encoder, want.protocol, strict=True))
    assert {e for e, *_ in rows} == {"ssl", "random_init", "raw"}
    np.testing.assert_allclose([float(row[3]) for row in rows], want.top1, atol=5e-5)
    r = runner.invoke(app, ["probe", str(store), "--ckpt", str(bt), "--label-fractions", "0.5,x"])
    assert r.exit_code == 2 and "--label-fractions: 'x' is not a number" in r.output


def test_predict_and_export(tmp_path):
    import rasterio
    from conftest import make_checkpoint

    from geoarray.datasets import synthetic_cube

    cube = synthetic_cube(size=(80, 70), n_times=2, seed=0)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    ckpt = make_checkpoint(
        tmp_path / "m.safetensors",
        num_classes=5,
        classes=list(cube.labels.attrs["classes"]),
        width=4,
        depth=3,
    )
    r = runner.invoke(app, ["predict", str(store), "--ckpt", str(ckpt), "--float16"])
    assert r.exit_code == 0, r.output
    assert "wrote mask, probabilities" in r.output
    ds = geoarray.open_cube(store)
    assert ds.probabilities.dtype == np.float16
    r = runner.invoke(app, ["predict", str(store), "--ckpt", str(ckpt)])
    assert r.exit_code == 2 and "overwrite" in r.output
    r = runner.invoke(app, ["export", str(store), "mask", "-o", str(tmp_path / "m.tif")])
    assert r.exit_code == 2 and "pass --time" in r.output
    r = runner.invoke(app, ["export", str(store), "mask", "-o", str(tmp_path / "m.tif"), "--time", "1"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "m.tif") as src:
        np.testing.assert_array_equal(src.read(1), ds["mask"].values[1])
        assert src.crs == cube.rio.crs
    r = runner.invoke(app, ["predict", str(store), "--ckpt", str(tmp_path / "nope.safetensors")])
    assert r.exit_code == 2 and "no checkpoint file" in r.output


# -- predict's outputs through the CLI (issue 8) -----------------------------------------------------------
def _store_and_models(tmp_path):
    from conftest import make_checkpoint

    from geoarray.datasets import synthetic_cube

    cube = synthetic_cube(size=(80, 70), n_times=2, seed=0)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=32)
    classes = list(cube.labels.attrs["classes"])
    a = make_checkpoint(tmp_path / "lc.safetensors", num_classes=5, classes=classes, width=4, depth=3)
    b = make_checkpoint(
        tmp_path / "cd.safetensors", num_classes=2, classes=["cloud", "clear"], width=4, depth=3
    )
    return store, a, b


def test_two_models_with_a_prefix_then_info_evaluate_export(tmp_path):
    import rasterio

    store, a, b = _store_and_models(tmp_path)
    assert runner.invoke(app, ["predict", str(store), "-c", str(a)]).exit_code == 0
    r = runner.invoke(app, ["predict", str(store), "-c", str(b)])
    assert r.exit_code == 2 and "pass --overwrite to replace it, or --prefix" in r.output
    assert "overwrite=True" not in r.output  # the CLI names its flags, not the API's arguments
    r = runner.invoke(app, ["predict", str(store), "-c", str(b), "--prefix", "cd_"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(store)])  # failed: conflicting sizes for dimension 'class'
    assert r.exit_code == 0, r.output
    assert "cd_probabilities" in r.output and "'cd_class'" in r.output
    r = runner.invoke(app, ["evaluate", str(store), "--pred", "cd_mask"])
    assert r.exit_code == 2 and "['cloud', 'clear'] are not among the truth" in r.output
    r = runner.invoke(app, ["evaluate", str(store), "--pred", "imagery", "--truth", "valid"])
    assert r.exit_code == 2 and "'imagery' has dtype float32; expected integer class ids" in r.output
    out = tmp_path / "p.tif"
    r = runner.invoke(app, ["export", str(store), "cd_probabilities", "-o", str(out), "--time", "2021-04-15"])
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as src:
        assert src.count == 2 and src.descriptions == ("cloud", "clear")
        want = geoarray.open_cube(store).cd_probabilities.values[1]
        np.testing.assert_allclose(src.read(), want)


def test_export_time_that_is_not_a_date_of_the_store(tmp_path):
    store, a, _ = _store_and_models(tmp_path)
    assert runner.invoke(app, ["predict", str(store), "-c", str(a)]).exit_code == 0
    out = str(tmp_path / "m.tif")
    for when, message in (
        ("5", "time index 5 is out of range for 'mask', which has 2 dates"),  # was an IndexError
        ("2031-01-01", "'mask' has no date '2031-01-01'"),  # was a KeyError
    ):
        r = runner.invoke(app, ["export", str(store), "mask", "-o", out, "--time", when])
        assert r.exit_code == 2 and message in r.output and "2021-04-15" in r.output, r.output
    for when in ("-1", "2021-04-15"):
        r = runner.invoke(app, ["export", str(store), "mask", "-o", out, "--time", when])
        assert r.exit_code == 0, r.output


def test_partial_outputs_are_refused_unless_allowed_and_a_resume_says_what_it_wrote(tmp_path):
    import zarr

    store, a, _ = _store_and_models(tmp_path)
    assert runner.invoke(app, ["predict", str(store), "-c", str(a)]).exit_code == 0
    for var, key in (("mask", "c/1/2/1"), ("probabilities", "c/1/0/2/1")):  # as a killed run leaves them
        (store / var / key).unlink()
        zarr.open_array(str(store / var), mode="r+").attrs["geoarray_complete"] = False
    r = runner.invoke(app, ["info", str(store)])
    assert "partial" in r.output
    r = runner.invoke(app, ["evaluate", str(store)])  # scored the hole as class 0 with exit code 0
    assert r.exit_code == 2 and "partial output" in r.output and "--allow-partial" in r.output
    assert "allow_partial=True" not in r.output
    r = runner.invoke(app, ["evaluate", str(store), "--allow-partial"])
    assert r.exit_code == 0 and "overall accuracy" in r.output
    r = runner.invoke(app, ["export", str(store), "mask", "-o", str(tmp_path / "m.tif"), "--time", "1"])
    assert r.exit_code == 2 and "partial output" in r.output and "--allow-partial" in r.output
    r = runner.invoke(app, ["predict", str(store), "-c", str(a)])
    assert r.exit_code == 0, r.output
    # printed "wrote nothing new" after writing the missing chunks
    assert (
        "mask, probabilities (resumed)" in r.output
        and "1 of 18 chunks each (17 were already there)" in r.output
    )
    r = runner.invoke(app, ["evaluate", str(store)])
    assert r.exit_code == 0 and "partial" not in r.output


def test_predict_into_a_new_store_from_one_with_outputs(tmp_path):
    store, a, b = _store_and_models(tmp_path)
    assert runner.invoke(app, ["predict", str(store), "-c", str(a)]).exit_code == 0
    new = tmp_path / "new.zarr"
    r = runner.invoke(app, ["predict", str(store), "-c", str(b), "-o", str(new)])  # failed, left a copy
    assert r.exit_code == 0, r.output
    ds = geoarray.open_cube(new)
    assert list(ds["class"].values) == ["cloud", "clear"]
    assert sorted(map(str, ds.data_vars)) == ["imagery", "labels", "mask", "probabilities", "valid"]
    assert geoarray.open_cube(store).probabilities.sizes["class"] == 5  # the source is untouched
    # a run that cannot work leaves nothing behind
    from conftest import make_checkpoint

    other = make_checkpoint(
        tmp_path / "o.safetensors", num_classes=2, classes=["x", "y"], bands=["swir"], width=4
    )
    r = runner.invoke(app, ["predict", str(store), "-c", str(other), "-o", str(tmp_path / "new2.zarr")])
    assert r.exit_code == 2 and "lacks band" in r.output
    assert sorted(p.name for p in tmp_path.iterdir() if "new2" in p.name) == []
    # an existing --output must be a copy of STORE
    from geoarray.datasets import synthetic_cube

    geoarray.write_cube(synthetic_cube(size=(40, 40), n_times=2, seed=0), tmp_path / "other.zarr")
    r = runner.invoke(app, ["predict", str(store), "-c", str(b), "-o", str(tmp_path / "other.zarr")])
    assert r.exit_code == 2 and "is not a copy of" in r.output


def test_cli_messages_name_flags_not_api_arguments(tmp_path):
    write_tif(tmp_path / "a_20200105.tif", coded((2, 16, 16)), descriptions=["red", "nir"])
    args = ["ingest", "geotiff", str(tmp_path / "a_20200105.tif"), "-o", str(tmp_path / "c.zarr")]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, args)  # said "Pass mode='w' to replace it, or mode='a' ..."
    assert r.exit_code == 2 and "pass --overwrite to replace it" in r.output and "mode=" not in r.output
    from geoarray.cli._app import _cli_words
    from geoarray.cli._model import predict

    fn = predict.__wrapped__
    assert _cli_words("pass overwrite=True, or prefix='s2_'; `halo=`, device='cpu'", fn) == (
        "pass --overwrite, or --prefix s2_; `--halo`, --device cpu"
    )
    # code and arguments the command has no option for are left alone
    assert _cli_words("`cube.chunk(y=512, x=512)`, predict(store=...), dtype=", fn) == (
        "`cube.chunk(y=512, x=512)`, predict(store=...), dtype="
    )
