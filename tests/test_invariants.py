"""task="invariants" (seed 000): the per-pixel losses by hand, arrow-of-time accuracy on held-out pixels of a
cube that changes in one direction, and every output (64-d features, 8-d head features, PCA features, the
arrow-of-time heatmap) with its dims and coords, written to Zarr, seamless blockwise, per sensor with prefix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import geoarray
from geoarray._checkpoint_checks import validate_meta
from geoarray.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from geoarray.datasets import change_cube
from geoarray.errors import CheckpointError
from geoarray.tasks._pretext import another_place, fit_pca, triplet_loss

HEADS = ["arrow_of_time", "temporal_association", "augmentation_association"]
PARTS = [
    ("features", "feature", 64),
    ("features_arrow_of_time", "feature_arrow_of_time", 8),
    ("features_temporal_association", "feature_temporal_association", 8),
    ("features_augmentation_association", "feature_augmentation_association", 8),
    ("features_pca", "feature_pca", 3),
]


# -- the losses by hand ----------------------------------------------------------------------------------
def test_triplet_loss_matches_a_hand_computation():
    # two pixels (1 x 2 map), 2-d features, one sample
    a = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]]])  # pixel 0: (0, 0); pixel 1: (1, 0)
    p = torch.tensor([[[[3.0, 1.0]], [[4.0, 0.5]]]])  # distances 5 and 0.5
    n = torch.tensor([[[[1.0, 1.0]], [[0.0, 3.0]]]])  # distances 1 and 3
    # pixel 0: max(0, 5 - 1 + 1) = 5; pixel 1: max(0, 0.5 - 3 + 1) = 0; mean 2.5
    assert float(triplet_loss(a, p, n, margin=1.0)) == pytest.approx(2.5)
    assert float(triplet_loss(a, p, n, margin=0.0)) == pytest.approx(2.0)
    # the same as torch's own per-pixel triplet loss (its eps aside)
    ref = torch.nn.functional.triplet_margin_loss(
        a.permute(0, 2, 3, 1).reshape(-1, 2), p.permute(0, 2, 3, 1).reshape(-1, 2),
        n.permute(0, 2, 3, 1).reshape(-1, 2), margin=1.0, eps=0.0,
    )  # fmt: skip
    assert float(ref) == pytest.approx(2.5)


def test_another_place_is_half_a_chip_away_on_the_same_date():
    f = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    g = another_place(f, 0.5)
    assert torch.equal(g[:, :, 2:, 3:], f[:, :, :2, :3])  # pixel (y, x) takes pixel (y - 2, x - 3) mod size
    assert torch.equal(g[1], torch.roll(f[1], (2, 3), (-2, -1)))


def test_pca_axes_are_orthonormal_and_ordered():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 5, generator=g) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])
    mean, axes = fit_pca(z, 3)
    assert torch.allclose(axes @ axes.T, torch.eye(3), atol=1e-5)
    var = ((z - mean) @ axes.T).var(0)
    assert bool((var[:-1] >= var[1:]).all()) and abs(float(axes[0, 0])) > 0.99


# -- one fit, many checks ----------------------------------------------------------------------------------
def _fit(out, heads, epochs, **task_kwargs):
    cube = change_cube(size=64, n_times=4, seed=0, chunks=64).drop_vars("labels")
    return geoarray.fit(
        cube,
        task="invariants",
        model="unet",
        model_kwargs={"depth": 2, "width": 8, "dropout": 0.0},
        task_kwargs={"heads": heads, **task_kwargs},
        chip_size=16,
        stride=8,
        batch_size=16,
        epochs=epochs,
        lr=1e-2,
        val_fraction=0.0,
        out=str(out),
        progress=False,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """64-d features, three 8-d heads and 3 PCA components, trained on cube seed 0 (10 epochs, 30 steps)."""
    return _fit(tmp_path_factory.mktemp("inv") / "inv.safetensors", HEADS, 10, pca_dim=3)


def _reversed(cube: xr.Dataset) -> xr.Dataset:
    rev = cube.copy()
    rev["imagery"] = (cube.imagery.dims, cube.imagery.values[::-1].copy())
    return rev


def test_arrow_of_time_orders_changed_held_out_pixels(trained):
    ck = trained
    test = change_cube(size=64, n_times=4, seed=1)  # another scene: every pixel is held out
    lab = test.labels.values
    changed = lab[1:] != lab[:-1]  # (pair, y, x): built over between dates t-1 and t
    fwd = geoarray.predict(test, ck, outputs=["arrow_of_time"]).arrow_of_time.values
    assert np.isnan(fwd[0]).all() and np.isfinite(fwd[1:]).all()  # no date before the first
    # the dates in reverse: P(the previous frame is earlier) must now be low where a pixel changed
    back = geoarray.predict(_reversed(test), ck, outputs=["arrow_of_time"]).arrow_of_time.values[1:][::-1]
    right = np.concatenate([fwd[1:][changed] > 0.5, back[changed] < 0.5])
    assert changed.sum() > 1000 and right.mean() >= 0.9, (changed.sum(), right.mean())  # 0.985 measured
    # antisymmetric: the same pair of dates in the other order gets 1 - p
    np.testing.assert_allclose(back, 1 - fwd[1:], atol=1e-5)


def test_checkpoint_describes_every_output(trained):
    ck = trained
    meta = read_metadata(ck)
    out = meta["output"]
    assert meta["task"] == "invariants" and meta["model"]["name"] == "pretext_unet"
    assert meta["input"]["kind"] == "sequence"
    assert [(p["name"], p["dim"], p["channels"]) for p in out["parts"]] == [
        *PARTS,
        ("arrow_of_time", None, 1),
    ]
    assert out["variables"] == [p["name"] for p in out["parts"]] and out["feature_dim"] == 64
    # the PCA travels as tensors of the safetensors file, beside the weights
    with open(ck, "rb") as f:
        index = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert index["pca_components"]["shape"] == [3, 64] and index["pca_mean"]["shape"] == [64]
    # a layout that is malformed or contradicts itself is refused, on save and on load alike
    for edit, match in (
        (lambda o: o["parts"][1].update(dim="feature"), r"output.parts"),  # two parts on one dim
        (lambda o: o["parts"][0].update(channels=32), r"output.feature_dim"),  # 32 != feature_dim 64
        (lambda o: o["parts"][5].update(dim=None, channels=2), r"output.parts\[5\]"),  # a map of 2 channels
        (lambda o: o["variables"].append("features_x"), r"output.variables"),  # a name no part makes
    ):
        doc = json.loads(json.dumps(meta))
        edit(doc["output"])
        with pytest.raises(CheckpointError, match=match):
            validate_meta(doc, "test")


def test_features_dims_coords_zarr_and_blockwise_equals_whole(trained, tmp_path):
    ck = trained
    test = change_cube(size=64, n_times=4, seed=2)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(test.drop_vars("labels"), store)
    whole = geoarray.predict(test.chunk(time=-1, y=64, x=64), ck)
    blocks = geoarray.open_cube(store).chunk(time=-1, y=32, x=32)  # 4 blocks, halo from the checkpoint
    written = geoarray.predict(blocks, ck, store=store)
    for name, dim, k in PARTS:
        da = written[name]
        assert da.dims == ("time", dim, "y", "x") and da.sizes[dim] == k, (name, da.dims)
        assert list(da[dim].values) == list(range(k))
        assert (da.x.values == test.x.values).all() and (da.time.values == test.time.values).all()
        assert da.attrs["checkpoint_sha256"] and da.rio.crs == test.rio.crs
        np.testing.assert_allclose(da.values, whole[name].values, atol=2e-5, rtol=1e-5)
    aot = written["arrow_of_time"]
    assert aot.dims == ("time", "y", "x")
    np.testing.assert_allclose(aot.values, whole["arrow_of_time"].values, atol=1e-6, equal_nan=True)
    assert ((aot.values[1:] >= 0) & (aot.values[1:] <= 1)).all()
    # the PCA features are the features projected on the stored axes
    m = load_checkpoint(ck).model
    f = whole["features"].values
    by_hand = np.einsum("kd,tdyx->tkyx", m.pca_components.numpy(), f - m.pca_mean.numpy()[None, :, None, None])
    np.testing.assert_allclose(whole["features_pca"].values, by_hand, atol=1e-4)


def test_per_sensor_checkpoints_write_into_one_cube_with_prefix(trained, tmp_path):
    ck = trained
    cube = change_cube(size=64, n_times=4, seed=3, sensors=["S2", "L8"]).drop_vars("labels")
    store = tmp_path / "s.zarr"
    geoarray.write_cube(cube, store)
    ckpts = {}
    c = load_checkpoint(ck)
    for sensor in ("S2", "L8"):  # one checkpoint per sensor, as seed 000 trains them
        inp = c.meta["input"]
        ckpts[sensor] = save_checkpoint(
            tmp_path / f"{sensor}.safetensors", c.model, task="invariants", bands=inp["bands"],
            mean=inp["mean"], std=inp["std"], sensor=sensor,
        )  # fmt: skip
    for sensor, path in ckpts.items():
        opened = geoarray.open_cube(store).chunk(time=-1)
        cube = geoarray.predict(opened, path, prefix=sensor.lower() + "_", store=store)
    s2 = cube.sensor.values == "S2"
    assert cube["s2_features"].dims == ("time", "s2_feature", "y", "x")
    assert cube["l8_features_arrow_of_time"].dims == ("time", "l8_feature_arrow_of_time", "y", "x")
    assert np.isnan(cube["s2_features"].values[~s2]).all() and np.isfinite(cube["s2_features"].values[s2]).all()
    assert np.isnan(cube["l8_features"].values[s2]).all() and np.isfinite(cube["l8_features"].values[~s2]).all()
    # each sensor's heatmap compares its own dates only: its first date has none before it
    l8 = cube["l8_arrow_of_time"].values
    first_l8 = int(np.flatnonzero(~s2)[0])
    assert np.isnan(l8[first_l8]).all() and np.isfinite(l8[np.flatnonzero(~s2)[1]]).all()
