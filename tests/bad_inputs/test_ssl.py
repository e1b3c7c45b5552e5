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
        (["arrow_of_time"], 1, r"heads \['arrow_of_time'\] compare two dates of one place, but the cube has 1 date"),
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
        ({"model": "pixel_cnn", "model_kwargs": {"width": 4}}, r"trains a UNet backbone.*got model 'pixel_cnn'"),
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
