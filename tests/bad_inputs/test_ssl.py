"""Bad inputs of self-supervised tasks: refused with a TrainError that says what was found, what was expected
and how to fix it (before training, or at the end of the first epoch when only the data can tell)."""

from __future__ import annotations

import pytest
import xarray as xr

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError

BT = {
    "task": "barlow_twins",
    "model": "pixel_cnn",
    "model_kwargs": {"width": 8, "out_channels": 8},
    "chip_size": 24,
    "batch_size": 64,
    "epochs": 1,
    "pixels_per_chip": 32,
    "progress": False,
}


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=96, n_times=4, seed=0, chunks=48).drop_vars("labels")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"task_kwargs": {"view_dates": 5}}, r"view_dates=5, but the cube has 4 dates.*view_dates <= 4"),
        ({"task_kwargs": {"lambd": -1}}, r"lambd=-1; expected a finite weight >= 0"),
        ({"task_kwargs": {"noise": float("nan")}}, r"noise=nan; expected a finite std >= 0"),
        ({"task_kwargs": {"view_dates": 0}}, r"view_dates=0; expected a positive integer"),
        ({"task_kwargs": {"lamda": 1.0}}, r"task 'barlow_twins' does not take these options.*lamda"),
        ({"loss": "focal"}, r"has its own loss; expected loss=None"),
        (
            {"model_kwargs": {"width": 8, "num_classes": 3}},
            r"has a class head of 3 outputs. Drop num_classes",
        ),
        ({"model": "unet", "model_kwargs": {"width": 4, "depth": 3}}, r"task 'barlow_twins' cannot train"),
        ({"task_kwargs": "lambd=1"}, r"task_kwargs='lambd=1'; expected a dict"),
    ],
)
def test_bad_options_are_refused_before_training(cube, tmp_path, change, match):
    out = tmp_path / "bt.safetensors"
    with pytest.raises(TrainError, match=match):
        geoarray.fit(cube, **{**BT, "out": str(out), **change})
    assert not out.exists()


def test_task_options_on_a_supervised_task_are_refused(tmp_path):
    c = synthetic_cube(size=64, n_times=2, seed=0, chunks=64)
    with pytest.raises(TrainError, match=r"task 'segmentation' does not take these options.*lambd"):
        geoarray.fit(c, task="segmentation", task_kwargs={"lambd": 1.0}, out=str(tmp_path / "m.safetensors"))


def test_pixels_with_too_few_valid_dates_are_skipped_and_all_skipped_is_an_error(cube, tmp_path):
    c = cube.copy()
    # every pixel valid on one date only: no pixel has view_dates=2 valid dates
    c["valid"] = xr.zeros_like(cube.valid) | (cube.time == cube.time[0])
    out = tmp_path / "bt.safetensors"
    with pytest.raises(TrainError, match=r"skipped every pixel \(\d+\): none has view_dates=2 valid dates"):
        geoarray.fit(c, **{**BT, "out": str(out), "min_valid": 0.2})
    assert not out.exists()


def test_pixels_with_too_few_valid_dates_are_counted_in_the_log(cube, tmp_path):
    c = cube.copy()
    west = cube.x < cube.x[48]
    one = xr.where(west, cube.time == cube.time[0], True)  # west: one valid date each
    c["valid"] = (one & xr.ones_like(cube.valid)).transpose("time", "y", "x")
    geoarray.fit(
        c,
        **{**BT, "out": str(tmp_path / "bt.safetensors"), "log_dir": str(tmp_path / "log"), "min_valid": 0.2},
    )
    import csv

    row = next(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    assert float(row["skipped_pixels"]) > 0


@pytest.fixture(scope="module")
def bt_ckpt(cube, tmp_path_factory):
    return geoarray.fit(cube, **{**BT, "out": str(tmp_path_factory.mktemp("bt") / "bt.safetensors")})


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"protocols": ("svm",)}, "ProbeError", r"protocols=\['svm'\]; expected some of \['linear', 'knn'\]"),
        (
            {"label_fractions": (0.0,)},
            "ProbeError",
            r"label_fractions=\[0.0\]; expected fractions in \(0, 1\]",
        ),
        ({"test_fraction": 1.0}, "ProbeError", r"test_fraction=1.0; expected a fraction between 0 and 1"),
        ({"labels": "truth"}, "ProbeError", r"probe needs labels, but the cube has no 'truth' variable"),
        ({"tile_size": 1000}, "ProbeError", r"leaves no (training|test) pixel; pass a smaller tile_size"),
    ],
)
def test_probe_refuses_bad_options(bt_ckpt, change, error, match):
    c = synthetic_cube(size=96, n_times=4, seed=0, chunks=48)
    with pytest.raises(getattr(geoarray.errors, error), match=match):
        geoarray.probe(c, bt_ckpt, **change)


def test_probe_refuses_a_cube_of_another_band_set_and_a_classifier(bt_ckpt, tmp_path):
    c = synthetic_cube(size=96, n_times=4, seed=0, chunks=48, bands=("b1", "b2", "b3", "b4"))
    with pytest.raises(geoarray.errors.BandError, match=r"lacks bands \['blue', 'green', 'red', 'nir'\]"):
        geoarray.probe(c, bt_ckpt)
    c = synthetic_cube(size=96, n_times=4, seed=0, chunks=48)
    clf = geoarray.fit(
        c,
        **{**BT, "task": "pixel_classification", "out": str(tmp_path / "p.safetensors")},
    )
    with pytest.raises(
        geoarray.errors.ProbeError, match=r"'pixel_classification' checkpoint .* feature encoders"
    ):
        geoarray.probe(c, clf)


# -- the evaluation protocols: fit(task="linear_probe" | "finetune", init=CKPT, label_fraction=) ---------------
PROTO = {"chip_size": 24, "batch_size": 64, "epochs": 1, "pixels_per_chip": 32, "progress": False}


@pytest.fixture(scope="module")
def labelled():
    return synthetic_cube(size=96, n_times=4, seed=0, chunks=48)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Checkpoints written by save_checkpoint (no training needed to be refused): a pixel encoder of the cube's
    bands, one of another band set, and a segmentation UNet."""
    from geoarray.checkpoint import save_checkpoint
    from geoarray.models import create_model

    d = tmp_path_factory.mktemp("enc")
    bands = ["blue", "green", "red", "nir"]
    enc = create_model("pixel_cnn", in_channels=4, width=8, out_channels=8)
    unet = create_model("unet", in_channels=4, num_classes=2, width=4, depth=2)
    chip = create_model("resnet18", in_channels=4, num_classes=2, width=4)
    mlp = create_model("pixel_mlp", in_channels=4, num_timesteps=6, hidden=8, out_channels=8)
    (d / "notes.safetensors").write_text("not a checkpoint")
    return {
        "pixel": str(save_checkpoint(d / "enc.safetensors", enc, task="barlow_twins", bands=bands)),
        "other_bands": str(
            save_checkpoint(d / "b.safetensors", enc, task="barlow_twins", bands=["b1", "b2", "b3", "b4"])
        ),
        "unet": str(
            save_checkpoint(d / "u.safetensors", unet, task="segmentation", bands=bands, classes=["a", "b"])
        ),
        "chip": str(
            save_checkpoint(d / "c.safetensors", chip, task="classification", bands=bands, classes=["a", "b"])
        ),
        "mlp6": str(save_checkpoint(d / "m.safetensors", mlp, task="barlow_twins", bands=bands)),
        "text": str(d / "notes.safetensors"),
        "missing": str(d / "missing.safetensors"),
    }


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            {"task": "linear_probe"},
            TrainError,
            r"task 'linear_probe' evaluates a pretrained encoder, but init=None",
        ),
        ({"task": "finetune"}, TrainError, r"task 'finetune' evaluates a pretrained encoder, but init=None"),
        (
            {"task": "pixel_classification", "init": "pixel"},
            TrainError,
            r"init='.*enc.safetensors' starts from a pretrained encoder, which task 'pixel_classification' does not",
        ),
        (
            {"init": "other_bands"},
            TrainError,
            r"trained on bands \['b1', 'b2', 'b3', 'b4'\], but the cube has bands \['blue', 'green', 'red', 'nir'\] "
            r"\(it lacks \['b1', 'b2', 'b3', 'b4'\]\). Use a cube with the encoder's bands, or init= an encoder",
        ),
        (
            {"init": "pixel", "bands": ["nir", "red", "green", "blue"]},
            TrainError,
            r"bands=\['nir', 'red', 'green', 'blue'\], but the encoder in init=.* was trained on bands "
            r"\['blue', 'green', 'red', 'nir'\], in that order.*Drop bands=",
        ),
        (
            {"init": "unet"},
            TrainError,
            r"is a 'segmentation' checkpoint of 'unet', a model of 'image' inputs; task 'finetune' needs a feature "
            r"encoder of pixel time series",
        ),
        ({"init": "text"}, geoarray.errors.CheckpointError, r"is not a readable .safetensors file"),
        ({"init": "missing"}, geoarray.errors.CheckpointError, r"no checkpoint file at .*it does not exist"),
        (
            {"init": "pixel", "model": "pixel_mlp"},
            TrainError,
            r"model='pixel_mlp', but init=.* holds a 'pixel_cnn' encoder. Drop model=",
        ),
        (
            {"init": "pixel", "model_kwargs": {"width": 16}},
            TrainError,
            r"model_kwargs \{'width': 16\} differ from the hparams \{'width': 8\} of the 'pixel_cnn' encoder",
        ),
        (
            {"init": "pixel", "label_fraction": 0},
            TrainError,
            r"label_fraction=0; expected a fraction in \(0, 1\]",
        ),
        (
            {"init": "pixel", "label_fraction": 1.5},
            TrainError,
            r"label_fraction=1.5; expected a fraction in \(0, 1\]",
        ),
        (
            {"init": "pixel", "label_fraction": float("nan")},
            TrainError,
            r"label_fraction=nan; expected a fraction in \(0, 1\]",
        ),
        (
            {"init": "pixel", "task_kwargs": {"backbone_lr": -1}},
            TrainError,
            r"backbone_lr=-1; expected a finite learning rate >= 0",
        ),
        (
            {"init": "pixel", "task": "linear_probe", "task_kwargs": {"backbone_lr": 1e-4}},
            TrainError,
            r"task 'linear_probe' does not take these options.*backbone_lr",
        ),
        (
            {"init": "chip"},
            TrainError,
            r"holds a chip encoder \('resnet18'\), whose labels are one class per chip: task 'finetune' needs "
            r"regions= \(a vector file\) and region_property=",
        ),
        (
            {"init": "pixel", "regions": "r.geojson", "region_property": "k"},
            TrainError,
            r"holds a pixel time-series encoder \('pixel_cnn'\), trained on the cube's 'labels' raster; regions= "
            r"label whole chips \(for chip encoders\). Drop regions=",
        ),
        (
            {"init": "mlp6"},
            TrainError,
            r"the 'pixel_mlp' encoder in init=.* takes exactly 6 dates, and the cube has 4. Select 6 dates",
        ),
        (
            {"init": "pixel", "labels": "truth"},
            TrainError,
            r"task 'finetune' needs labels, but the cube has no 'truth' variable",
        ),
    ],
)
def test_protocols_refuse_bad_inits_and_options_before_any_work(
    labelled, encoders, tmp_path, change, error, match
):
    opts = {"task": "finetune", **PROTO, **change, "out": str(tmp_path / "p.safetensors")}
    if "init" in opts:
        opts["init"] = encoders[opts["init"]]
    with pytest.raises(error, match=match):
        geoarray.fit(labelled, **opts)
    assert not (tmp_path / "p.safetensors").exists()


def test_label_fraction_on_a_task_without_labels_is_refused(cube, tmp_path):
    with pytest.raises(
        TrainError, match=r"label_fraction=0.5 keeps .* task 'barlow_twins' trains without labels"
    ):
        geoarray.fit(cube, **{**BT, "label_fraction": 0.5, "out": str(tmp_path / "bt.safetensors")})
    assert not (tmp_path / "bt.safetensors").exists()


def test_a_label_fraction_that_rounds_to_no_tile_keeps_one(labelled, encoders, tmp_path):
    from geoarray.checkpoint import read_metadata

    out = geoarray.fit(
        labelled,
        task="finetune",
        init=encoders["pixel"],
        label_fraction=1e-9,
        **PROTO,
        out=str(tmp_path / "f.st"),
    )
    tr = read_metadata(out)["training"]
    assert round(1e-9 * tr["labelled_train_tiles"]) == 0 and tr["label_tiles"] == 1


def test_probe_cli_on_a_cube_without_labels_is_a_one_line_error(bt_ckpt, cube, tmp_path):
    from typer.testing import CliRunner

    from geoarray.cli import app

    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=48)
    r = CliRunner().invoke(app, ["probe", str(store), "--ckpt", str(bt_ckpt)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: probe needs labels, but the cube has no 'labels' variable" in r.output


# -- task="invariants" (seed 000) ---------------------------------------------------------------------------
INV = {
    "task": "invariants",
    "model": "unet",
    "model_kwargs": {"depth": 2, "width": 4},
    "chip_size": 16,
    "batch_size": 4,
    "epochs": 1,
    "progress": False,
}


@pytest.mark.parametrize(
    "heads, n_times, match",
    [
        (
            ["arrow_of_time"],
            1,
            r"heads \['arrow_of_time'\] compare two dates of one place, but the cube has 1 date",
        ),
        (
            ["temporal_association", "augmentation_association"],
            1,
            r"heads \['temporal_association'\] compare two dates.*heads=\['augmentation_association'\]",
        ),
        ([], 3, r"heads=\[\] \(an empty list\); expected one or more distinct heads among"),
        (["arrow_of_time", "arrow"], 3, r"heads=\['arrow_of_time', 'arrow'\] \(unknown \['arrow'\]\)"),
        ("arrow_of_time", 3, r"heads='arrow_of_time'; expected a list of head names"),
        (["arrow_of_time", "arrow_of_time"], 3, r"\(repeated names\)"),
    ],
)
def test_invariants_heads_and_dates_are_checked_before_any_work(tmp_path, heads, n_times, match):
    from geoarray.datasets import change_cube

    c = change_cube(size=32, n_times=n_times, seed=0).drop_vars("labels")
    out = tmp_path / "inv.safetensors"
    with pytest.raises(TrainError, match=match):
        geoarray.fit(c, **{**INV, "task_kwargs": {"heads": heads}, "out": str(out)})
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"model": "pixel_cnn", "model_kwargs": {"width": 4}},
            r"trains a UNet backbone.*got model 'pixel_cnn'",
        ),
        ({"task_kwargs": {"pca_dim": 80}}, r"pca_dim=80; expected at most feature_dim=64"),
        ({"task_kwargs": {"head_dim": 0}}, r"head_dim=0; expected an integer >= 1"),
        ({"task_kwargs": {"margin": -1}}, r"margin=-1; expected a finite number >= 0"),
        ({"loss": "focal"}, r"has its own losses \(one per head\); expected loss=None"),
    ],
)
def test_invariants_options_are_checked_before_any_work(tmp_path, change, match):
    from geoarray.datasets import change_cube

    c = change_cube(size=32, n_times=2, seed=0).drop_vars("labels")
    out = tmp_path / "inv.safetensors"
    with pytest.raises(TrainError, match=match):
        geoarray.fit(c, **{**INV, "out": str(out), **change})
    assert not out.exists()


VIC = {
    "task": "vicreg",
    "model": "resnet18",
    "model_kwargs": {"width": 4},
    "chip_size": 32,
    "batch_size": 8,
    "epochs": 1,
    "progress": False,
}


@pytest.fixture(scope="module")
def chips2():
    return synthetic_cube(size=96, n_times=2, seed=0, chunks=48).drop_vars("labels")


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"task_kwargs": {"sim_coeff": -1}},
            r"sim_coeff=-1; expected a finite weight >= 0 \(VICReg's defaults",
        ),
        ({"task_kwargs": {"std_coeff": float("nan")}}, r"std_coeff=nan; expected a finite weight >= 0"),
        ({"task_kwargs": {"cov_coeff": True}}, r"cov_coeff=True; expected a finite weight >= 0"),
        ({"task_kwargs": {"sim_coeff": "25"}}, r"sim_coeff='25'; expected a finite weight >= 0"),
        (
            {"task_kwargs": {"std_coeff": 0, "cov_coeff": 0}},
            r"std_coeff=0 and cov_coeff=0 leave only the invariance term.*collapse",
        ),
        (
            {"task_kwargs": {"positives": "spatial"}},
            r"positives='spatial'; expected 'augment' .* or 'temporal'",
        ),
        (
            {"task_kwargs": {"view_dates": 2}},
            r"view_dates=2 is an option of pixel time-series views.*Drop view_dates",
        ),
        (
            {"task_kwargs": {"crop_scale": (0.5, 2)}},
            r"crop_scale=\(0.5, 2\); expected \(low, high\) area fractions",
        ),
        ({"task_kwargs": {"crop_scale": 0.5}}, r"crop_scale=0.5; expected a pair of numbers"),
        ({"task_kwargs": {"contrast": 1.5}}, r"contrast=1.5; expected a number in \[0, 1\)"),
        ({"task_kwargs": {"blur_p": 2}}, r"blur_p=2; expected a probability between 0 and 1"),
        ({"task_kwargs": {"min_valid_date": 2}}, r"min_valid_date=2; expected the fraction \(0..1\)"),
        ({"task_kwargs": {"sim_coef": 25}}, r"task 'vicreg' does not take these options.*sim_coef"),
        (
            {"task_kwargs": {"positives": "temporal"}, "times": [1]},
            r"positives='temporal' pairs two dates .* selects 1",
        ),
        (
            {"model_kwargs": {"width": 4, "num_classes": 5}},
            r"class head of 5 outputs. Pass model_kwargs num_classes=0",
        ),
        (
            {"model": "unet", "model_kwargs": {"width": 4, "depth": 3}},
            r"task 'vicreg' cannot train; expected one of \['resnet18', 'resnet50'\]",
        ),
        (
            {"model": "pixel_cnn", "model_kwargs": {"width": 8}},
            r"task 'vicreg' cannot train; expected one of \['resnet18', 'resnet50'\]",
        ),
        (
            {
                "task": "barlow_twins",
                "model": "pixel_cnn",
                "model_kwargs": {"width": 8},
                "task_kwargs": {"crop_scale": (0.5, 1.0)},
            },
            r"\['crop_scale'\] are options of chip views, but 'pixel_cnn' takes pixel time series",
        ),
        (
            {
                "task": "barlow_twins",
                "model": "pixel_cnn",
                "model_kwargs": {"width": 8},
                "task_kwargs": {"min_valid_date": 0.9},
            },
            r"\['min_valid_date'\] are options of chip views",
        ),
    ],
)
def test_bad_vicreg_options_are_refused_before_training(chips2, tmp_path, change, match):
    out = tmp_path / "v.safetensors"
    with pytest.raises(TrainError, match=match):
        geoarray.fit(chips2, **{**VIC, "out": str(out), **change})
    assert not out.exists()


def test_temporal_positives_on_a_one_date_cube_are_refused(chips2, tmp_path):
    one = chips2.isel(time=[0])
    with pytest.raises(
        TrainError,
        match=r"positives='temporal' pairs the same place on two different dates, but the cube has 1 date\. "
        r"Use positives='augment'",
    ):
        geoarray.fit(
            one, **{**VIC, "task_kwargs": {"positives": "temporal"}, "out": str(tmp_path / "v.safetensors")}
        )
    assert not (tmp_path / "v.safetensors").exists()


def test_temporal_positives_without_two_valid_dates_anywhere_end_in_a_train_error(chips2, tmp_path):
    c = chips2.copy()
    c["valid"] = xr.zeros_like(chips2.valid) | (chips2.time == chips2.time[0])  # date 1 is all clouds
    out = tmp_path / "v.safetensors"
    with pytest.raises(
        TrainError, match=r"skipped every chip \(\d+\): none has two dates with at least min_valid_date=0.5"
    ):
        geoarray.fit(
            c, **{**VIC, "task_kwargs": {"positives": "temporal"}, "min_valid": 0.2, "out": str(out)}
        )
    assert not out.exists()
