"""The third real-data hunt: self-supervised features, probe, labels from regions, chips and metrics, and the CLI
around them.

Each test is one bad row of tests/bad_inputs/HUNT-2026-11-30-ssl.md; its comment says what happened before.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_checkpoint

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import GeoArrayError, ProbeError, TimeError

BANDS = ("blue", "green", "red", "nir")
PROBE = {"protocols": ("knn",), "label_fractions": (1.0,), "max_pixels": 600, "tile_size": 8}


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=48, n_times=3, seed=3).load()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A pixel time-series feature encoder (random init), as task='barlow_twins' saves one."""
    path = tmp_path_factory.mktemp("enc") / "bt.safetensors"
    return make_checkpoint(path, "pixel_cnn", task="barlow_twins", width=8, out_channels=8)


# -- probe ------------------------------------------------------------------------------------------------------
def test_probe_refuses_dates_out_of_order(cube, encoder):
    # row 9: probe fed the pixel encoder series in the cube's (shuffled) order and scored them (top-1 0.942
    # against 0.960 in order on the L7 cube); predict refuses such a cube
    assert len(geoarray.probe(cube, encoder, **PROBE)) == 3
    with pytest.raises(TimeError, match="sortby"):
        geoarray.probe(cube.isel(time=[2, 0, 1]), encoder, **PROBE)


def test_probe_refuses_labels_of_one_class(cube, encoder):
    # row 10: every pixel of class 0 -> top-1 = 1.0 for every encoder and protocol, no warning
    one = cube.copy()
    one["labels"] = one["labels"].where(one["labels"] == 255, 0).astype(one["labels"].dtype)
    with pytest.raises(ProbeError, match="at least 2 classes"):
        geoarray.probe(one, encoder, **PROBE)


@pytest.mark.parametrize("var", ["imagery", "valid"])
def test_probe_refuses_a_label_variable_that_is_not_a_class_map(cube, encoder, var):
    # row 11: labels="imagery" -> xarray ValueError "('y', 'x') must be a permuted list of ('band', 'y', 'x')";
    # labels="valid" (bool) -> scored as classes 0/1, top-1 1.0
    with pytest.raises(ProbeError, match="class map|integer class ids"):
        geoarray.probe(cube, encoder, labels=var, **PROBE)


def test_probe_options_are_checked_before_work(cube, encoder):
    # row 12: label_fractions=0.5 -> TypeError "'float' object is not iterable"; seed=-1 -> numpy ValueError
    # "expected non-negative integer"; max_pixels=0 -> "0 labelled tiles ... label more of the cube";
    # chip_size=0 ran with the checkpoint's chip size
    opts = {k: v for k, v in PROBE.items() if k != "label_fractions"}
    df = geoarray.probe(cube, encoder, label_fractions=1.0, **opts)
    assert df["label_fraction"].tolist() == [1.0] * 3
    assert len(geoarray.probe(cube, encoder, **{**PROBE, "protocols": "knn"})) == 3
    for bad, match in (
        ({"seed": -1}, "seed=-1"),
        ({"max_pixels": 0}, "max_pixels=0"),
        ({"chip_size": 0}, "chip_size=0"),
        ({"label_fractions": "all"}, "label_fractions"),
    ):
        with pytest.raises(ProbeError, match=match):
            geoarray.probe(cube, encoder, **{**PROBE, **bad})
