from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import xarray as xr

import geoarray
from geoarray.checkpoint import read_metadata
from geoarray.datasets import synthetic_cube
from geoarray.errors import ModelError, TrainError
from geoarray.metrics import confusion_matrix, scores

SMALL = {"model": "unet", "model_kwargs": {"width": 16, "depth": 3}, "progress": False}


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=256, n_times=3, seed=0, chunks=128)


@pytest.fixture(scope="module")
def trained(cube, tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    out = geoarray.fit(
        cube,
        task="segmentation",
        chip_size=64,
        stride=32,
        epochs=12,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.5,
        out=str(d / "unet.safetensors"),
        log_dir=str(d / "log"),
        seed=0,
        **SMALL,
    )
    return out, d


def test_unet_reaches_iou_on_held_out_block_and_predict_writes_it_back(cube, trained, tmp_path):
    ckpt, d = trained
    meta = read_metadata(ckpt)
    assert meta["task"] == "segmentation" and meta["input"]["bands"] == list(cube.band.values)
    assert meta["training"]["epoch"] >= 1 and meta["training"]["best_metric"] > 0.8
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    out = geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    # IoU on the held-out spatial tiles, computed from the cube itself
    from geoarray.chips import plan_chips

    plan = plan_chips(cube, chip_size=64, stride=32, val_fraction=0.2, seed=0)
    held = plan.val_mask((cube.sizes["y"], cube.sizes["x"]))
    truth = out.labels.where(out.valid & held, 255).astype("uint8")
    pred = out["mask"].where(held, 255)
    s = scores(confusion_matrix(pred, truth, 5, ignore_index=255), cube.labels.attrs["classes"])
    assert s["mean_iou"] >= 0.9, s["iou"]
    rows = list(csv.DictReader(open(d / "log" / "metrics.csv")))
    assert len(rows) == 12 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_training_is_deterministic_with_a_seed(cube, tmp_path):
    kw = dict(
        task="segmentation", chip_size=64, epochs=1, batch_size=8, lr=1e-3, seed=3, steps_per_epoch=3, **SMALL
    )
    a = geoarray.fit(cube, out=str(tmp_path / "a.safetensors"), **kw)
    b = geoarray.fit(cube, out=str(tmp_path / "b.safetensors"), **kw)
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


class _Interrupted(BaseException):
    """A Ctrl-C / kill stand-in that nothing in the library catches."""


def test_resume_continues_the_same_run(cube, tmp_path, monkeypatch):
    """A run of 4 epochs interrupted after epoch 2 and resumed equals the run of 4 in one go: weights,
    optimizer, learning-rate schedule (warm-up, then cosine over the 4 epochs), shuffle and augmentation all
    continue where the interrupted run stopped."""
    from geoarray.training import state
    from geoarray.training.state import load_state, state_path

    kw = dict(
        task="segmentation",
        epochs=4,
        chip_size=32,
        batch_size=8,
        lr=1e-3,
        steps_per_epoch=2,
        schedule="cosine",
        warmup_epochs=1.5,
        augment=True,
        seed=2,
        model="unet",
        model_kwargs={"width": 8, "depth": 3},
        progress=False,
    )
    whole = tmp_path / "whole.safetensors"
    geoarray.fit(cube, out=str(whole), keep_state=True, **kw)
    out = tmp_path / "m.safetensors"
    real_save = state.save_state

    def save_then_interrupt(*args, epoch, **kwargs):
        path = real_save(*args, epoch=epoch, **kwargs)
        if epoch == 2:  # interrupted right after epoch 2's side file was written
            raise _Interrupted
        return path

    monkeypatch.setattr(state, "save_state", save_then_interrupt)
    with pytest.raises(_Interrupted):
        geoarray.fit(cube, out=str(out), log_dir=str(tmp_path / "l1"), **kw)
    monkeypatch.undo()
    assert load_state(out).epoch == 2  # the interrupted run left its side file
    geoarray.fit(cube, out=str(out), resume=str(out), log_dir=str(tmp_path / "l2"), keep_state=True, **kw)
    rows = list(csv.DictReader(open(tmp_path / "l2" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [3, 4]
    a, b = load_state(whole), load_state(out)  # the last epoch's weights (the checkpoint holds the best)
    assert a is not None and b is not None and a.epoch == b.epoch == 4
    for k, w in a.weights.items():
        np.testing.assert_allclose(b.weights[k].numpy(), w.numpy(), rtol=0, atol=1e-6, err_msg=k)
    # a finished run removes its side file unless asked to keep it
    geoarray.fit(cube, out=str(tmp_path / "n.safetensors"), **{**kw, "epochs": 2})
    assert not state_path(tmp_path / "n.safetensors").exists()


def test_multilabel_sigmoid_segmentation_trains(tmp_path):
    c = synthetic_cube(size=128, n_times=1, seed=1, bands=[f"b{i}" for i in range(12)], chunks=64)
    lab = c.labels.isel(time=0)
    classes = ["water", "forest", "field", "urban"]
    masks = np.stack([(lab.values == k) | ((k == 3) & (lab.values == 4)) for k in range(4)]).astype("uint8")
    c["labels"] = xr.DataArray(
        masks, dims=("class", "y", "x"), coords={"class": classes}, attrs={"classes": classes, "nodata": 255}
    )
    out = geoarray.fit(
        c,
        task="segmentation",
        loss="bce_dice",
        chip_size=32,
        stride=16,
        epochs=8,
        batch_size=16,
        lr=3e-3,
        out=str(tmp_path / "ml.safetensors"),
        log_dir=str(tmp_path / "log"),
        **SMALL,
    )
    meta = read_metadata(out)
    assert meta["output"]["kind"] == "multilabel" and meta["output"]["classes"] == classes
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_iou"]) > 0.6
    pred = geoarray.predict(c, out)
    assert pred["mask"].dims == ("time", "class", "y", "x")


def test_pixel_time_series_classification_trains(tmp_path):
    c = synthetic_cube(size=96, n_times=4, seed=2, chunks=48)
    out = geoarray.fit(
        c,
        task="pixel_classification",
        model="pixel_cnn",
        model_kwargs={"width": 32},
        chip_size=24,
        epochs=4,
        batch_size=256,
        lr=3e-3,
        loss="focal",
        pixels_per_chip=128,
        out=str(tmp_path / "px.safetensors"),
        log_dir=str(tmp_path / "log"),
        progress=False,
    )
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    assert float(rows[-1]["val_accuracy"]) > 0.7
    pred = geoarray.predict(c.chunk(time=-1), out)
    assert pred["mask"].dims == ("y", "x")


def test_chip_classification_with_region_labels(tmp_path):
    c = synthetic_cube(size=128, n_times=2, seed=3, chunks=64)
    east = c.x > c.x[64]
    c["imagery"] = c.imagery + 0.3 * east  # the two regions differ
    lon = c.x.values
    from pyproj import Transformer

    tr = Transformer.from_crs(c.rio.crs, "EPSG:4326", always_xy=True)
    x0, x1, xm = float(lon[0]) - 5, float(lon[-1]) + 5, float(lon[64])
    y0, y1 = float(c.y.values[-1]) - 5, float(c.y.values[0]) + 5

    def poly(xa, xb):
        ring = [tr.transform(x, y) for x, y in ((xa, y0), (xb, y0), (xb, y1), (xa, y1), (xa, y0))]
        return {"type": "Polygon", "coordinates": [ring]}

    gj = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"country": "west"}, "geometry": poly(x0, xm)},
            {"type": "Feature", "properties": {"country": "east"}, "geometry": poly(xm, x1)},
        ],
    }
    (tmp_path / "regions.geojson").write_text(json.dumps(gj))
    out = geoarray.fit(
        c,
        task="classification",
        model="resnet18",
        model_kwargs={"width": 8},
        chip_size=32,
        stride=8,
        epochs=6,
        batch_size=16,
        lr=1e-3,
        regions=str(tmp_path / "regions.geojson"),
        region_property="country",
        out=str(tmp_path / "cls.safetensors"),
        log_dir=str(tmp_path / "log"),
        progress=False,
    )
    meta = read_metadata(out)
    assert meta["output"]["classes"] == ["east", "west"]
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert max(float(r["val_accuracy"]) for r in rows) >= 0.75


# -- bad input ---------------------------------------------------------------------------------------------
def test_missing_labels(cube, tmp_path):
    with pytest.raises(TrainError, match=r"needs labels, but the cube has no 'labels'.*read_labels"):
        geoarray.fit(
            cube.drop_vars("labels"), task="segmentation", out=str(tmp_path / "x.safetensors"), **SMALL
        )


def test_labels_on_another_grid(cube, tmp_path):
    bad = cube.drop_vars("labels").assign(labels=(("row", "col"), np.zeros((10, 10), "uint8")))
    with pytest.raises(TrainError, match="labels are on another grid"):
        geoarray.fit(bad, task="segmentation", out=str(tmp_path / "x.safetensors"), **SMALL)


def test_class_count_mismatch(cube, tmp_path):
    with pytest.raises(TrainError, match=r"num_classes=3 but the labels have 5 classes"):
        geoarray.fit(
            cube,
            task="segmentation",
            model="unet",
            model_kwargs={"num_classes": 3, "width": 4},
            out=str(tmp_path / "x.safetensors"),
            progress=False,
        )


def test_chip_problems(cube, tmp_path):
    with pytest.raises(TrainError, match="does not fit the cube"):
        geoarray.fit(cube, task="segmentation", chip_size=512, out=str(tmp_path / "x.safetensors"), **SMALL)
    with pytest.raises(TrainError, match="not a multiple of the model stride 4"):
        geoarray.fit(cube, task="segmentation", chip_size=30, out=str(tmp_path / "x.safetensors"), **SMALL)
    with pytest.raises(TrainError, match="leaves no training tiles"):
        geoarray.fit(
            cube,
            task="segmentation",
            chip_size=64,
            val_fraction=0.95,
            out=str(tmp_path / "x.safetensors"),
            **SMALL,
        )
    with pytest.raises(TrainError, match=r"filtered out.*min_positive"):
        geoarray.fit(
            cube,
            task="segmentation",
            chip_size=64,
            min_positive=10**6,
            out=str(tmp_path / "x.safetensors"),
            **SMALL,
        )
    with pytest.raises(ModelError, match="unknown model"):
        geoarray.fit(
            cube, task="segmentation", model="nope", out=str(tmp_path / "x.safetensors"), progress=False
        )
    with pytest.raises(TypeError, match="chipsize"):  # typed keyword-only options: Python names the typo
        geoarray.fit(cube, task="segmentation", chipsize=64)


def test_nan_loss_stops_with_epoch_and_step_and_saves_nothing(cube, tmp_path):
    out = tmp_path / "nan.safetensors"
    with pytest.raises(TrainError, match=r"the loss became (nan|inf) at epoch 1, step \d+"):
        geoarray.fit(
            cube,
            task="segmentation",
            chip_size=64,
            epochs=2,
            batch_size=8,
            lr=1e30,
            optimizer="sgd",
            out=str(out),
            **SMALL,
        )
    assert not out.exists()


def test_bf16_autocast_and_early_stopping(cube, tmp_path):
    # lr=0: only BatchNorm statistics move, so the score soon stops improving; patience 1 must stop training
    # right after the first epoch that does not beat the best, and the checkpoint is the best epoch
    out = geoarray.fit(
        cube,
        task="segmentation",
        chip_size=64,
        epochs=8,
        batch_size=8,
        lr=0.0,
        precision="bf16",
        early_stopping=1,
        steps_per_epoch=2,
        out=str(tmp_path / "b.safetensors"),
        log_dir=str(tmp_path / "log"),
        **SMALL,
    )
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    scores_ = [float(r["score"]) for r in rows]
    first_flat = next(
        i for i in range(1, len(scores_) + 1) if i == len(scores_) or scores_[i] <= max(scores_[:i])
    )
    assert len(rows) == min(first_flat + 1, 8) < 8
    assert read_metadata(out)["training"]["epoch"] == int(np.argmax(scores_)) + 1
    with pytest.raises(TrainError, match="needs a GPU"):
        geoarray.fit(
            cube,
            task="segmentation",
            chip_size=64,
            epochs=1,
            precision="16",
            device="cpu",
            out=str(tmp_path / "c.safetensors"),
            **SMALL,
        )


def test_bf16_autocast_runs_the_model_in_bfloat16(cube, tmp_path):
    """precision="bf16" runs the forward passes of training and validation under bfloat16 autocast: the
    convolutions' outputs are bfloat16 (float32 with precision="32", the negative control)."""
    import torch

    from geoarray.training.config import FitConfig
    from geoarray.training.loop import Trainer
    from geoarray.training.prepare import prepare

    for precision, want in (("bf16", torch.bfloat16), ("32", torch.float32)):
        cfg = FitConfig(
            task="segmentation",
            chip_size=32,
            epochs=1,
            batch_size=4,
            steps_per_epoch=1,
            precision=precision,
            device="cpu",
            out=str(tmp_path / f"{precision}.safetensors"),
            **SMALL,
        )
        trainer = Trainer(cube, cfg, prepare(cube, cfg))
        seen: dict[bool, set] = {True: set(), False: set()}  # training / eval-mode passes
        head = trainer.model.decoder.head
        head.register_forward_hook(lambda mod, inp, out, seen=seen: seen[mod.training].add(out.dtype))
        trainer.run()
        # eval-mode passes also include the checkpoint's receptive-field measurement, outside autocast
        assert seen[True] == {want} and want in seen[False], (precision, seen)


def test_bad_device_is_refused_before_training(tmp_path):
    c = synthetic_cube(size=64, n_times=1)
    with pytest.raises(TrainError, match=r"device='gpu' is not a torch device"):
        geoarray.fit(
            c, task="segmentation", chip_size=32, epochs=1, device="gpu", out=str(tmp_path / "m.safetensors")
        )


# -- losses: all-ignored batches -------------------------------------------------------------------------
def _grad_of(fn, logits, target, **kw):
    import torch

    lg = torch.as_tensor(logits, dtype=torch.float32).clone().requires_grad_(True)
    loss = fn(lg, torch.as_tensor(target), **kw)
    loss.backward()
    return float(loss.detach()), lg.grad


def test_losses_by_hand_and_zero_for_an_all_ignored_batch():
    import math

    import torch

    from geoarray._constants import IGNORE
    from geoarray.tasks import _losses

    # two pixels, three classes: logits (1, 3, 1, 2)
    logits = np.array([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]]])
    ce1 = math.log(math.e + math.e**2 + math.e**3) - 1.0  # pixel 1, class 0
    ce2 = math.log(3.0)  # pixel 2 (all logits 0), class 2
    loss, _ = _grad_of(_losses.cross_entropy, logits, [[[0, 2]]])
    assert loss == pytest.approx((ce1 + ce2) / 2, rel=1e-6)
    w = torch.tensor([2.0, 1.0, 1.0])
    loss, _ = _grad_of(_losses.cross_entropy, logits, [[[0, 2]]], weight=w)
    assert loss == pytest.approx((2 * ce1 + ce2) / 3, rel=1e-6)  # torch's weighted mean
    loss, _ = _grad_of(_losses.cross_entropy, logits, [[[0, IGNORE]]])
    assert loss == pytest.approx(ce1, rel=1e-6)
    pt = math.exp(-ce1)
    loss, _ = _grad_of(_losses.focal, logits, [[[0, IGNORE]]])
    assert loss == pytest.approx((1 - pt) ** 2 * ce1, rel=1e-6)
    # multi-label: (1, 2 classes, 1, 1); class 1 ignored
    loss, _ = _grad_of(_losses.bce, np.array([[[[2.0]], [[-1.0]]]]), [[[[1]], [[IGNORE]]]])
    assert loss == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    # every target ignored (a chip of label nodata): 0, with zero finite gradients, not NaN
    for fn, lg, target, kw in [
        (_losses.cross_entropy, logits, [[[IGNORE, IGNORE]]], {}),
        (_losses.cross_entropy, logits, [[[IGNORE, IGNORE]]], {"weight": w}),
        (_losses.cross_entropy, logits, [[[1, 1]]], {"weight": torch.tensor([1.0, 0.0, 1.0])}),  # weight 0
        (_losses.focal, logits, [[[IGNORE, IGNORE]]], {}),
        (_losses.bce, logits, np.full((1, 3, 1, 2), IGNORE), {}),
        (_losses.bce_dice, logits, np.full((1, 3, 1, 2), IGNORE), {}),
    ]:
        loss, grad = _grad_of(fn, lg, target, **kw)
        assert loss == 0.0, fn.__name__
        assert torch.isfinite(grad).all() and (grad == 0).all(), fn.__name__


def _sparse_cube(size=256, seed=0):
    """Labels like polygons rasterised onto a scene: nodata but for three small patches (< 0.1 % of pixels)."""
    c = synthetic_cube(size=size, n_times=2, seed=seed, chunks=size // 2)
    truth = c.labels.isel(time=0).values
    lab = np.full((size, size), 255, np.uint8)
    for y, x in ((20, 30), (140, 200), (200, 60)):
        lab[y : y + 4, x : x + 5] = truth[y : y + 4, x : x + 5]
    c["labels"] = xr.DataArray(
        lab, dims=("y", "x"), attrs={"classes": c.labels.attrs["classes"], "nodata": 255}
    )
    assert (lab != 255).mean() < 0.001
    return c


def test_sparse_labels_train_instead_of_a_nan_loss(tmp_path):
    """Before: chips with only nodata made an all-ignored batch, a NaN loss, and "lower lr" at step 1."""
    c = _sparse_cube()
    out = geoarray.fit(
        c,
        task="segmentation",
        chip_size=32,
        epochs=2,
        batch_size=4,
        val_fraction=0.0,
        out=str(tmp_path / "s.safetensors"),
        log_dir=str(tmp_path / "log"),
        **SMALL,
    )
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert read_metadata(out)["training"]["epoch"] >= 1


# -- normalisation statistics ----------------------------------------------------------------------------
def test_band_stats_use_valid_pixels_only_and_not_the_labels():
    from geoarray._preprocess import band_stats

    c = synthetic_cube(size=64, n_times=2, seed=4, chunks=32)
    bands = [str(b) for b in c.band.values]
    x, ok = c.imagery.values.astype(np.float64), c.valid.values[:, None] & np.isfinite(c.imagery.values)
    want_mean = [x[:, k][ok[:, 0]].mean() for k in range(4)]
    want_std = [x[:, k][ok[:, 0]].std() for k in range(4)]
    mean, std = band_stats(c, bands)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9)
    np.testing.assert_allclose(std, want_std, rtol=1e-9)
    # fill values behind valid=False change nothing, and the labels play no part
    filled = c.copy()
    filled["imagery"] = c.imagery.where(c.valid, 1e30)
    filled["labels"] = c.labels * 0
    m2, s2 = band_stats(filled, bands)
    np.testing.assert_allclose(m2, mean, rtol=1e-9)
    np.testing.assert_allclose(s2, std, rtol=1e-9)


def test_band_stats_warn_when_float32_cannot_normalise_a_band():
    """Seen on real data: 1e30 in half an image gave mean/std 4.5e29 and no word."""
    from geoarray._preprocess import band_stats
    from geoarray.errors import GeoArrayWarning

    c = synthetic_cube(size=64, n_times=2, seed=4, chunks=32)
    bands = [str(b) for b in c.band.values]
    c = c.drop_vars("valid")
    img = c.imagery.values.copy()
    img[:, 1, :, :32] = 1e30  # an unmasked fill value in half of band "green"
    c["imagery"] = (c.imagery.dims, img)
    with pytest.warns(
        GeoArrayWarning, match=r"band 'green': its valid values reach 1e\+30.*mark it invalid"
    ) as rec:
        mean, _ = band_stats(c, bands)
    assert len(rec) == 1 and mean[1] > 1e29  # the statistics are what they are; the warning says why
    img[:, 1, :, :32] = -3.4e38  # float32's lowest: the usual GDAL fill
    c["imagery"] = (c.imagery.dims, img)
    with pytest.warns(GeoArrayWarning, match=r"band 'green'.*-3.4e\+38"):
        band_stats(c, bands)
    img[:, 1] = np.nan  # a band with no valid value at all
    c["imagery"] = (c.imagery.dims, img)
    with pytest.warns(GeoArrayWarning, match=r"band 'green' has no valid value in the cube"):
        band_stats(c, bands)
    # a Landsat scene's collar: 0 where there is no data, digital numbers of 6000..20000 elsewhere, no nodata
    dn = np.random.default_rng(1).integers(6000, 20000, size=img.shape).astype("uint16")
    dn[:, :, :, :12] = 0
    c["imagery"] = (c.imagery.dims, dn)
    with pytest.warns(
        GeoArrayWarning,
        match=r"bands \['blue', 'green', 'red', 'nir'\]: up to 18.8% of their valid "
        r"values are exactly 0.*undeclared nodata.*gdal_edit.py -a_nodata 0",
    ) as rec:
        band_stats(c, bands)
    assert len(rec) == 1  # one warning for all the bands
    c["valid"] = (("time", "y", "x"), np.broadcast_to(c.x.values >= float(c.x[12]), (2, 64, 64)))
    band_stats(c, bands)  # masked: quiet
    c = c.drop_vars("valid")
    # genuine wide data stays quiet: a heavy tail over 5 orders of magnitude, and a large offset
    img = np.random.default_rng(0).lognormal(0, 2.5, size=img.shape).astype("float32")
    img[:, 2] += 1e9
    c["imagery"] = (c.imagery.dims, img)
    band_stats(c, bands)  # GeoArrayWarning is an error in the test suite
    # and genuine zeros among small values (reflectance with dark water) too
    img = np.random.default_rng(2).uniform(0, 0.5, size=img.shape).astype("float32")
    img[:, :, :8] = 0.0
    c["imagery"] = (c.imagery.dims, img)
    band_stats(c, bands)


# -- dates: training and predict feed sequence models the same numbers ------------------------------------
def test_sequence_models_get_the_same_dates_in_training_and_predict(tmp_path):
    import torch

    from geoarray._preprocess import date_features
    from geoarray.models import GeoModel, register_model
    from geoarray.models._registry import _FACTORIES

    seen: list[np.ndarray] = []

    class DateProbe(GeoModel):
        input_kind = "sequence"

        def __init__(self, in_channels, num_classes, date_encoding):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, num_classes, 1)
            self.out_channels, self.date_encoding = num_classes, date_encoding

        def forward(self, x, dates=None):
            seen.append(dates.detach().cpu().numpy().copy())
            b, t = x.shape[:2]
            y = self.conv(x.flatten(0, 1)).unflatten(0, (b, t))
            return y + 0 * dates[:, :, None, None, None]

    def _date_probe(in_channels: int = 3, num_classes: int = 2, date_encoding: str = "days") -> DateProbe:
        return DateProbe(in_channels, num_classes, date_encoding)

    register_model(_date_probe)
    try:
        c = synthetic_cube(size=64, n_times=3, seed=1, chunks=32)
        ckpt = geoarray.fit(
            c,
            task="segmentation",
            model="_date_probe",
            chip_size=32,
            epochs=1,
            batch_size=2,
            val_fraction=0.0,
            out=str(tmp_path / "d.safetensors"),
            progress=False,
        )
        probe_dates = {10.0, 40.0, 70.0}  # the receptive-field measurement's own example input
        trained = {float(v) for d in seen for v in d.ravel()} - probe_dates
        seen.clear()
        geoarray.predict(c.chunk(time=-1), ckpt)["mask"].compute(scheduler="synchronous")
        predicted = {float(v) for d in seen for v in d.ravel()}
    finally:
        _FACTORIES.pop("_date_probe", None)
    days = set(date_features(c.time.values, "days").tolist())
    assert min(days) > 18_000  # days since 1970, not day of year
    assert trained == predicted == days


# -- the CLI: chip filters and a quiet DDP run -------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=96, n_times=1, seed=2, chunks=48), path)
    return path


def test_cli_fit_chip_filters(store, tmp_path):
    from typer.testing import CliRunner

    from geoarray.cli import app

    runner = CliRunner()
    base = ["fit", str(store), "-o", str(tmp_path / "m.safetensors"), "--chip-size", "32", "--epochs", "1"]
    base += ["--model-kw", "width=4", "--model-kw", "depth=3", "--val-fraction", "0"]
    r = runner.invoke(app, [*base, "--min-positive", "30", "--positive-classes", "1,2", "--min-valid", "0.9"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    r = runner.invoke(app, [*base, "--min-positive", "100000"])
    assert (
        r.exit_code == 2
        and "every training chip was filtered out" in r.output
        and "'min_positive'" in r.output
    )
    r = runner.invoke(app, [*base, "--min-valid", "1.5"])
    assert r.exit_code == 2 and "--min-valid 1.5; expected a fraction between 0 and 1" in r.output
    r = runner.invoke(app, [*base, "--positive-classes", "water"])
    assert r.exit_code == 2 and "--positive-classes 'water'; expected comma-separated class ids" in r.output
    r = runner.invoke(app, [*base, "--positive-classes", "9", "--min-positive", "1"])
    assert r.exit_code == 2 and "positive_classes=[9] names ids [9] that the labels do not have" in r.output


@pytest.mark.slow
def test_cli_fit_with_workers_prints_no_dask_info_lines(store, tmp_path):
    """distributed logs at INFO; the CLI's root handler printed every scheduler/nanny line without --verbose."""
    import subprocess
    import sys

    out = tmp_path / "m.safetensors"
    args = [sys.executable, "-m", "geoarray.cli", "fit", str(store), "-o", str(out), "--chip-size", "32"]
    args += ["--epochs", "1", "--batch-size", "4", "--model-kw", "width=4", "--model-kw", "depth=3"]
    args += ["--val-fraction", "0", "--workers", "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "INFO" not in r.stderr, r.stderr
    assert out.exists() and "wrote" in r.stdout
