"""VICReg on image chips (seed 002): its loss by hand, the multispectral augmentations, temporal positives, a
tiny fit that ends without collapse, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import geoarray
from geoarray.checkpoint import read_metadata
from geoarray.chips import Batch
from geoarray.datasets import synthetic_cube
from geoarray.tasks._augment import ChipAugment, gaussian_kernels

SMALL = {
    "model": "resnet18",
    "model_kwargs": {"width": 8},
    "chip_size": 32,
    "stride": 16,
    "batch_size": 32,
    "progress": False,
}
#: an augmentation that changes nothing, to look at what the view makers pick
IDENTITY = ChipAugment(
    crop_scale=(1.0, 1.0), flip=False, rotate=False, brightness=0.0, contrast=0.0, blur_p=0.0, noise=0.0
)


# -- the loss -------------------------------------------------------------------------------------------------
def test_vicreg_loss_matches_a_hand_computation():
    from geoarray.tasks.vicreg import vicreg_loss

    z1 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    z2 = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    loss, t = vicreg_loss(z1, z2)  # weights 25 / 25 / 1
    # invariance: mean of (z1 - z2)² = (0 + 1 + 0 + 1) / 4
    assert t["vic_invariance"].item() == pytest.approx(0.5)
    # variance (unbiased, n - 1 = 1): z1 dim 0 {1, 3} var 2 -> std 1.414 -> hinge 0; dim 1 {0, 0} var 0 ->
    # std sqrt(1e-4) = 0.01 -> hinge 0.99; z2: dims {1, 3} and {1, -1}, var 2 each -> 0. (0.99 / 2 + 0) / 2
    assert t["vic_variance"].item() == pytest.approx(0.2475, rel=1e-6)
    # covariance: C(z1) = [[2, 0], [0, 0]] -> no off-diagonal; C(z2) = [[2, -2], [-2, 2]] -> (4 + 4) / D=2 = 4
    assert t["vic_covariance"].item() == pytest.approx(4.0, rel=1e-6)
    assert loss.item() == pytest.approx(25 * 0.5 + 25 * 0.2475 + 4.0, rel=1e-6)  # 22.6875
    loss2, _ = vicreg_loss(z1, z2, sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5)
    assert loss2.item() == pytest.approx(2 * 0.5 + 3 * 0.2475 + 0.5 * 4.0, rel=1e-6)  # 3.7425


def test_vicreg_loss_equals_numpy_on_random_projections():
    from geoarray.tasks.vicreg import vicreg_loss

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.7, (16, 5)), rng.normal(0, 0.7, (16, 5))
    loss, t = vicreg_loss(torch.tensor(a), torch.tensor(b), 25.0, 25.0, 1.0)

    def var(z):
        return np.maximum(0.0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4)).mean()

    def cov(z):
        c = np.cov(z, rowvar=False)  # (n - 1) normalised
        return (c**2).sum() - (np.diag(c) ** 2).sum()

    want = {
        "vic_invariance": ((a - b) ** 2).mean(),
        "vic_variance": (var(a) + var(b)) / 2,
        "vic_covariance": (cov(a) + cov(b)) / 5,
    }
    for k, v in want.items():
        assert t[k].item() == pytest.approx(v, rel=1e-9), k
    assert want["vic_variance"] > 0.1  # std 0.7 < 1: the hinge is active here
    assert loss.item() == pytest.approx(
        25 * want["vic_invariance"] + 25 * want["vic_variance"] + want["vic_covariance"]
    )


def test_the_variance_term_is_zero_when_every_std_is_at_least_one():
    from geoarray.tasks.vicreg import variance_term, vicreg_loss

    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 8, generator=g)
    z = (z - z.mean(0)) / z.std(0)  # std exactly 1 in every dimension
    z = z * torch.linspace(1.0, 4.0, 8)  # ... and up to 4
    z.requires_grad_(True)
    v = variance_term(z)
    assert v.item() == 0.0
    v.backward()
    assert z.grad is not None and (z.grad == 0).all()  # nothing to push
    _, t = vicreg_loss(z.detach(), z.detach() + 0.1)
    assert t["vic_variance"].item() == 0.0
    # and a dimension with std 0.5 gives exactly (1 - sqrt(0.25 + 1e-4)) / 8
    w = z.detach().clone()
    w[:, 0] = w[:, 0] / w[:, 0].std() * 0.5
    assert variance_term(w).item() == pytest.approx((1 - math.sqrt(0.25 + 1e-4)) / 8, rel=1e-5)


# -- the augmentations ----------------------------------------------------------------------------------------
def _ramp(b=4, c=13, h=16, w=16):
    """Chips whose value is an affine function of the pixel position, different per band and chip."""
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    k = torch.arange(b * c, dtype=torch.float64).reshape(b, c, 1, 1)
    return (k + 1) * 0.01 * (i + 2 * j) + k


def test_augmentations_are_seeded_keep_the_shape_and_take_any_number_of_bands():
    x = _ramp(b=16).float()
    aug = ChipAugment()
    torch.manual_seed(0)
    a = aug(x, torch.Generator().manual_seed(3))
    torch.manual_seed(1)  # torch's global generator plays no part
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape == (16, 13, 16, 16)  # 13 bands: nothing assumes RGB
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all() and not torch.equal(a, x)


def test_flips_and_rotations_only_rearrange_pixels():
    x = torch.arange(3 * 2 * 8 * 8, dtype=torch.float32).reshape(3, 2, 8, 8)
    aug = ChipAugment(crop_scale=(1.0, 1.0), brightness=0.0, contrast=0.0, blur_p=0.0, noise=0.0)
    out = aug(x, torch.Generator().manual_seed(0))
    for o, xi in zip(out, x, strict=True):
        images = [torch.rot90(v, k, dims=(-2, -1)) for v in (xi, xi.flip(-1)) for k in range(4)]
        assert any(torch.equal(o, im) for im in images)  # one of the 8 symmetries of the square, exactly


def test_the_crop_is_a_zoom_into_the_chip_resized_back():
    x = _ramp(b=6, c=2)
    aug = ChipAugment(
        crop_scale=(0.25, 0.5), flip=False, rotate=False, brightness=0.0, contrast=0.0, blur_p=0.0, noise=0.0
    )
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # bilinear resampling of an affine ramp inside the chip is the same ramp, zoomed: still affine (zero second
    # differences), with slopes scaled by the crop's side fraction (sqrt of 0.25..0.5 area / aspect)
    # (the outer ring of pixels can sample the chip's outer half pixel, where the edge value is replicated)
    inner = out[..., 1:-1, 1:-1]
    assert inner.diff(dim=-1).diff(dim=-1).abs().max() < 1e-9
    assert inner.diff(dim=-2).diff(dim=-2).abs().max() < 1e-9
    for o, xi in zip(inner, x, strict=True):
        sx = float(o[0].diff(dim=-1).mean() / xi[0].diff(dim=-1).mean())
        sy = float(o[0].diff(dim=-2).mean() / xi[0].diff(dim=-2).mean())
        assert 0.25 <= sx * sy <= 0.5 + 1e-9  # the crop's area fraction
        assert 0.75 - 1e-9 <= sx / sy <= 4 / 3 + 1e-9  # its aspect ratio
        assert o.min() >= xi.min() - 1e-9 and o.max() <= xi.max() + 1e-9  # inside the chip


def test_brightness_and_contrast_are_per_band_affine_changes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    aug = ChipAugment(
        crop_scale=(1.0, 1.0),
        flip=False,
        rotate=False,
        brightness=0.3,
        contrast=0.5,
        jitter_p=1.0,
        blur_p=0.0,
        noise=0.0,
    )
    out = aug(x, torch.Generator().manual_seed(1))
    xc, oc = x - x.mean((-2, -1), keepdim=True), out - out.mean((-2, -1), keepdim=True)
    f = (xc * oc).sum((-2, -1)) / (xc * xc).sum((-2, -1))  # the contrast factor of each (chip, band)
    assert (oc - f[..., None, None] * xc).abs().max() < 1e-9  # one factor per chip and band explains it all
    assert ((f >= 0.5 - 1e-9) & (f <= 1.5 + 1e-9)).all() and (f.std(1) > 1e-3).all()  # bands of a chip differ
    shift = out.mean((-2, -1)) - x.mean((-2, -1))
    assert (shift.abs() <= 0.3 + 1e-9).all() and (shift.std(1) > 1e-3).all()


def test_blur_uses_normalised_gaussian_kernels_and_noise_has_its_std():
    k = gaussian_kernels(torch.tensor([1.0, 2.0], dtype=torch.float64), 6)
    t = np.arange(-6, 7)
    for row, s in zip(k.numpy(), (1.0, 2.0), strict=True):
        want = np.exp(-(t**2) / (2 * s * s))
        np.testing.assert_allclose(row, want / want.sum(), rtol=1e-12)
    const = torch.full((3, 2, 12, 12), 0.7, dtype=torch.float64)
    blur = ChipAugment(
        crop_scale=(1.0, 1.0),
        flip=False,
        rotate=False,
        brightness=0.0,
        contrast=0.0,
        blur_p=1.0,
        noise=0.0,
        blur_sigma=(1.0, 1.0),
    )
    torch.testing.assert_close(blur(const, torch.Generator().manual_seed(0)), const)  # blur keeps a flat chip
    delta = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    delta[..., 15, 15] = 1.0
    b = blur(delta, torch.Generator().manual_seed(0))
    t3 = np.arange(-3, 4)  # sigma 1: the kernel reaches 3 sigma
    g1 = np.exp(-(t3**2) / 2) / np.exp(-(t3**2) / 2).sum()
    np.testing.assert_allclose(
        b[0, 0, 15, 12:19].numpy(), g1[3] * g1, rtol=1e-5
    )  # the 2-D Gaussian's middle row
    assert b[0, 0, 15, :12].abs().max() == 0 and b[0, 0, :12].abs().max() == 0  # nothing beyond 3 sigma
    assert b.sum().item() == pytest.approx(1.0, rel=1e-6)  # mass kept
    torch.testing.assert_close(b, b.flip(-1).flip(-2))  # symmetric
    noisy = ChipAugment(
        crop_scale=(1.0, 1.0), flip=False, rotate=False, brightness=0.0, contrast=0.0, blur_p=0.0, noise=0.2
    )
    z = torch.zeros(8, 4, 32, 32)
    assert noisy(z, torch.Generator().manual_seed(0)).std().item() == pytest.approx(0.2, rel=0.05)


# -- the views ------------------------------------------------------------------------------------------------
def test_temporal_positives_are_two_different_valid_dates_of_one_chip():
    from geoarray.tasks._views import chip_views

    b, t = 6, 4
    x = (
        torch.arange(t, dtype=torch.float32).reshape(1, t, 1, 1, 1).expand(b, t, 2, 4, 4).clone()
    )  # value = date
    x += 10 * torch.arange(b, dtype=torch.float32).reshape(b, 1, 1, 1, 1)  # ... + 10 x chip
    valid = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 0, 1], [0.9, 0.2, 0.6, 0.1], [1, 0, 0, 0], [0.4, 0.4, 1, 1], [0, 0, 0, 0]]
    )
    keep_want = [True, True, True, False, True, False]  # chips with two dates >= 0.5 valid
    seen = set()
    for seed in range(20):
        (v,), keep = chip_views(
            Batch(x, None, None, valid),
            IDENTITY,
            temporal=True,
            min_valid=0.5,
            generator=torch.Generator().manual_seed(seed),
        )
        assert keep.tolist() == keep_want
        n = int(keep.sum())
        assert v.shape == (2 * n, 2, 4, 4)
        chips = torch.nonzero(keep).flatten()
        for i, c in enumerate(chips.tolist()):
            d1, d2 = float(v[i, 0, 0, 0]) - 10 * c, float(v[n + i, 0, 0, 0]) - 10 * c
            assert d1 != d2 and valid[c, int(d1)] >= 0.5 and valid[c, int(d2)] >= 0.5
            seen.add((c, int(d1), int(d2)))
    pairs0 = {(a, b) for c, a, b in seen if c == 0}
    assert (
        len(pairs0) > 4 and any(a > b for a, b in pairs0) and any(a < b for a, b in pairs0)
    )  # random, any order


@pytest.fixture(scope="module")
def chip_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("vic")
    store = d / "c.zarr"
    geoarray.write_cube(
        synthetic_cube(size=128, n_times=3, seed=4, chunks=64).drop_vars("labels"), store, chunk=64
    )
    return store


def test_temporal_positives_plan_every_date_of_each_chip(chip_store):
    from geoarray.training.config import FitConfig
    from geoarray.training.prepare import prepare

    cube = geoarray.open_cube(chip_store)
    cfg = FitConfig(task="vicreg", task_kwargs={"positives": "temporal"}, out="x.safetensors", **SMALL)
    setup = prepare(cube, cfg)
    assert setup.plan.times == [(0, 1, 2)] and setup.stream_kind == "chip"
    assert setup.model_kwargs["num_classes"] == 0  # the embedding, not resnet's default 10-class head
    default = prepare(cube, FitConfig(task="vicreg", out="x.safetensors", **SMALL))
    assert default.plan.times == [(0,), (1,), (2,)]  # two augmentations of one chip per date


# -- a tiny fit -----------------------------------------------------------------------------------------------
def test_lr_warms_up_then_follows_the_cosine():
    from geoarray.training.loop import lr_factor

    # 10 warm-up steps of 100: (step + 1) / 10, then the cosine over the remaining 90, starting from 1
    assert [lr_factor(s, 100, 10, "cosine") for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)  # half way through the cosine
    assert lr_factor(99, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert (
        lr_factor(5, 100, 10, "constant") == pytest.approx(0.6) and lr_factor(50, 100, 10, "constant") == 1.0
    )


def test_a_tiny_vicreg_fit_learns_without_collapse_and_writes_a_feature_encoder(chip_store, tmp_path):
    cube = geoarray.open_cube(chip_store)
    out = tmp_path / "vic.safetensors"
    geoarray.fit(
        cube,
        task="vicreg",
        task_kwargs={"projector_dim": 64},
        epochs=4,
        lr=3e-3,
        warmup_epochs=2,
        schedule="cosine",
        steps_per_epoch=2,
        out=str(out),
        log_dir=str(tmp_path / "log"),
        **{**SMALL, "stride": 32, "batch_size": 16},
    )
    rows = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    print([{k: r[k] for k in ("train_loss", "vic_variance", "effective_rank", "lr")} for r in rows])
    # the lr logged after each epoch's last step (2 steps an epoch, 4 warm-up steps of 8): (1 + 1) / 4, 4 / 4,
    # then the cosine at (5 - 4) / 4 and (7 - 4) / 4 of the way: 0.5 (1 + cos(pi / 4)), 0.5 (1 + cos(3 pi / 4))
    want = [0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [float(r["lr"]) for r in rows] == pytest.approx([3e-3 * f for f in want])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["effective_rank"]) > 4 and float(rows[-1]["emb_std_mean"]) > 1e-3  # no collapse
    meta = read_metadata(out)
    assert meta["task"] == "vicreg" and meta["output"] == {
        "kind": "features",
        "variables": ["features"],
        "feature_dim": 64,
    }
    assert meta["model"]["name"] == "resnet18" and meta["model"]["hparams"]["num_classes"] == 0
    ck = geoarray.load_checkpoint(out)
    assert not any(k.startswith("projector") for k in ck.model.state_dict())
    with torch.no_grad():
        e = ck.model(torch.zeros(3, 4, 32, 32))
    assert e.shape == (3, 64)  # one 64-d embedding per chip (resnet18 at width 8: 8 x 8)


@pytest.mark.parametrize(
    "task, task_kwargs, terms",
    [
        ("vicreg", {"positives": "temporal", "projector_dim": 32}, ("vic_invariance", "vic_variance")),
        (
            "barlow_twins",
            {"projector_dim": 32},
            ("bt_on_diag", "bt_off_diag"),
        ),  # the same chip views, for free
    ],
)
def test_temporal_positives_and_barlow_twins_train_chip_encoders(
    chip_store, tmp_path, task, task_kwargs, terms
):
    out = tmp_path / "m.safetensors"
    geoarray.fit(
        geoarray.open_cube(chip_store),
        task=task,
        task_kwargs=task_kwargs,
        epochs=1,
        steps_per_epoch=2,
        out=str(out),
        log_dir=str(tmp_path / "log"),
        **{**SMALL, "stride": 32, "batch_size": 8},
    )
    (row,) = list(csv.DictReader(open(tmp_path / "log" / "metrics.csv")))
    assert all(math.isfinite(float(row[t])) for t in terms)
    assert float(row["skipped_chips"]) == 0  # every chip of this cube has valid dates to pair
    meta = read_metadata(out)
    assert meta["task"] == task and meta["output"]["feature_dim"] == 64 and meta["input"]["kind"] == "chip"


class _Interrupted(BaseException):
    """A kill stand-in that nothing in the library catches."""


def test_a_resumed_run_keeps_the_warm_up_and_cosine_of_the_whole_run(tmp_path, monkeypatch):
    """The schedule scales the configured lr, not the last (already scaled) lr a resumed optimizer brings back:
    interrupted where the cosine is at 0.93, a resumed run logs the same lr per epoch as the run in one go."""
    from geoarray.training import state

    cube = synthetic_cube(size=128, n_times=1, seed=0, chunks=64)
    kw = dict(
        task="segmentation",
        model="unet",
        model_kwargs={"width": 4, "depth": 3},
        chip_size=32,
        stride=16,
        batch_size=8,
        epochs=4,
        lr=1e-3,
        steps_per_epoch=2,
        warmup_epochs=1,
        schedule="cosine",
        progress=False,
    )
    geoarray.fit(cube, out=str(tmp_path / "whole.safetensors"), log_dir=str(tmp_path / "l0"), **kw)
    real_save = state.save_state

    def save_then_interrupt(*args, epoch, **kwargs):
        path = real_save(*args, epoch=epoch, **kwargs)
        if epoch == 2:
            raise _Interrupted
        return path

    out = tmp_path / "m.safetensors"
    monkeypatch.setattr(state, "save_state", save_then_interrupt)
    with pytest.raises(_Interrupted):
        geoarray.fit(cube, out=str(out), log_dir=str(tmp_path / "l1"), **kw)
    monkeypatch.undo()
    geoarray.fit(cube, out=str(out), resume=str(out), log_dir=str(tmp_path / "l2"), **kw)
    whole = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "l0" / "metrics.csv"))]
    resumed = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "l2" / "metrics.csv"))]
    # 2 warm-up steps of 8, then the cosine over 6: after steps 1, 3, 5, 7
    want = [1.0] + [0.5 * (1 + math.cos(math.pi * s / 6)) for s in (1, 3, 5)]
    assert whole == pytest.approx([1e-3 * f for f in want])
    assert resumed == pytest.approx(whole[2:])
