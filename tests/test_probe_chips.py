"""probe on chip encoders (issue 11): chip labels from regions or a label raster's majority, a spatial split,
and the random-init and raw baselines beside the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from helpers import write_west_east_regions

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import ProbeError

SIZE, CHIP = 128, 16


def texture_cube(seed: int, n_times: int = 2) -> xr.Dataset:
    """West half horizontal stripes, east half vertical stripes (random phase per band and date) plus noise:
    the same band means and spreads on both sides, so only texture tells the classes apart."""
    c = synthetic_cube(size=SIZE, n_times=n_times, seed=seed, cloud_fraction=0.0, bands=("b1", "b2", "b3"))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    n = SIZE // CHIP
    img = np.empty((n_times, 3, SIZE, SIZE), np.float32)
    for t in range(n_times):
        for b in range(3):  # a random phase and period per chip, band and date: nothing to memorise
            phase = np.kron(rng.uniform(0, 2 * np.pi, (n, n)), np.ones((CHIP, CHIP)))
            period = np.kron(rng.uniform(3, 6, (n, n)), np.ones((CHIP, CHIP)))
            h = np.sin(2 * np.pi * yy / period + phase)
            v = np.sin(2 * np.pi * xx / period + phase)
            img[t, b] = np.where(xx < SIZE // 2, h, v) + rng.normal(0, 0.5, (SIZE, SIZE))
    lab = (xx >= SIZE // 2).astype("uint8")
    return c.assign(
        imagery=(("time", "band", "y", "x"), img),
        valid=c.valid | True,
        labels=xr.DataArray(lab, dims=("y", "x"), attrs={"classes": ["west", "east"], "nodata": 255}),
    )


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    """A chip classifier trained (plain torch, 80 steps of 32 chips) on another texture cube of the same kind."""
    from geoarray.models import create_model

    c = texture_cube(seed=1, n_times=4)
    x = c.imagery.values.reshape(4, 3, SIZE // CHIP, CHIP, SIZE // CHIP, CHIP).transpose(0, 2, 4, 1, 3, 5)
    x = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 3, CHIP, CHIP)))
    y = torch.from_numpy(
        np.tile(np.arange(SIZE // CHIP) >= SIZE // CHIP // 2, (4, SIZE // CHIP, 1)).ravel()
    ).long()
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=3, num_classes=2, width=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is fastest on a shared machine
    try:
        for _ in range(80):
            idx = torch.randperm(len(x))[:32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return geoarray.save_checkpoint(
        tmp_path_factory.mktemp("sup") / "sup.safetensors",
        model,
        task="classification",
        bands=["b1", "b2", "b3"],
        classes=["east", "west"],
        training={"chip_size": CHIP},
    )


def test_chip_labels_are_the_majority_class_ignoring_nodata():
    from geoarray._chip_kernel import chip_grid
    from geoarray._probe_chips import chip_labels

    lv = np.full((1, 4, 6), 9, np.uint8)  # 9: nodata
    lv[0, :2, :2] = [[1, 1], [2, 9]]  # chip (0, 0): 1 wins
    lv[0, :2, 2:4] = [[0, 2], [2, 9]]  # chip (0, 1): 2 wins
    lv[0, 2:, 4:] = [[3, 0], [0, 3]]  # chip (1, 2): a tie goes to the lower id
    got = chip_labels(lv, 9, chip_grid((4, 6), 2, 2))
    np.testing.assert_array_equal(got[0], [[1, 2, -1], [-1, -1, 0]])


def test_probe_on_chips_from_regions_and_from_a_label_raster(tmp_path, supervised):
    cube = texture_cube(seed=0)
    regions = write_west_east_regions(cube, tmp_path / "r.geojson", SIZE // 2)
    df = geoarray.probe(cube, supervised, regions=regions, region_property="k", label_fractions=(1.0,))
    top1 = df.set_index(["encoder", "protocol"])["top1"]
    assert set(df["encoder"]) == {"ssl", "random_init", "raw"} and (df["top5"] == 1.0).all()  # 2 classes
    # measured: ssl 1.00 / 1.00 (linear / knn), random_init 0.52 / 0.48, raw 0.52 / 0.40
    assert top1["ssl", "linear"] >= 0.9 and top1["ssl", "knn"] >= 0.9
    assert top1["ssl", "linear"] > top1["random_init", "linear"] + 0.2
    assert top1["raw", "linear"] < 0.75  # band means and spreads carry no class: near chance
    same = geoarray.probe(
        cube, supervised, label_fractions=(1.0,)
    )  # labels(y, x): the same chips, same classes
    np.testing.assert_allclose(same["top1"].to_numpy(), df["top1"].to_numpy())


# -- bad input -----------------------------------------------------------------------------------------------
def test_probe_on_chips_refuses_missing_labels_and_a_missing_property(tmp_path, supervised):
    cube = texture_cube(seed=0, n_times=1)
    with pytest.raises(ProbeError, match=r"no 'labels' variable .* and no regions= were given"):
        geoarray.probe(cube.drop_vars("labels"), supervised)
    regions = write_west_east_regions(cube, tmp_path / "r.geojson", SIZE // 2)
    with pytest.raises(ProbeError, match=r"have no property 'country'; they have \['k'\]"):
        geoarray.probe(cube, supervised, regions=regions, region_property="country")
    with pytest.raises(ProbeError, match="regions= needs region_property="):
        geoarray.probe(cube, supervised, regions=regions)
    with pytest.raises(ProbeError, match=r"chip_size=256 does not fit the cube"):
        geoarray.probe(cube, supervised, chip_size=256)
