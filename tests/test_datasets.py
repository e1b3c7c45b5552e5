from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import rasterio

import geoarray
from geoarray.datasets import sample_cube, sample_path, synthetic_cube


def test_synthetic_cube_is_deterministic_and_valid():
    a = synthetic_cube(size=64, n_times=3, seed=5)
    b = synthetic_cube(size=64, n_times=3, seed=5)
    c = synthetic_cube(size=64, n_times=3, seed=6)
    geoarray.validate_cube(a)
    np.testing.assert_array_equal(a.imagery.values, b.imagery.values)
    assert not np.array_equal(np.nan_to_num(a.imagery.values), np.nan_to_num(c.imagery.values))


def test_synthetic_cube_has_known_truth_change_and_invalid_pixels():
    ds = synthetic_cube(size=128, n_times=4, seed=0)
    classes = ds.labels.attrs["classes"]
    assert classes[-1] == "new_building" and len(classes) == 5
    lab = ds.labels.values
    new = [(lab[t] == len(classes) - 1).sum() for t in range(4)]
    assert new[0] == 0 and new[-1] > 0 and all(x <= y for x, y in itertools.pairwise(new))  # objects appear
    for k in range(4):  # every land-cover class is present
        assert (lab[0] == k).mean() > 0.05
    img, valid = ds.imagery.values, ds.valid.values
    assert np.isnan(img).any() and not valid.all()
    assert not valid[np.isnan(img).any(axis=1)].any()  # every NaN pixel is marked invalid
    assert ds.rio.crs.to_epsg() == 32633


def test_sample_cube_is_real_landsat_at_first_date():
    ds = sample_cube()
    geoarray.validate_cube(ds)
    assert ds.imagery.shape == (4, 6, 352, 349)
    assert ds.rio.crs.to_epsg() == 31985
    with rasterio.open(sample_path()) as src:
        real = src.read()
    planted = ds.labels.values[0] == 3
    np.testing.assert_array_equal(ds.imagery.values[0][:, ~planted], real[:, ~planted])
    assert list(ds.labels.attrs["classes"]) == ["water", "vegetation", "built", "new_construction"]
    assert (ds.labels.values[-1] == 3).sum() > (ds.labels.values[0] == 3).sum()
    assert not ds.valid.values[1].all()


def test_import_geoarray_does_not_import_torch():
    code = "import sys, geoarray; geoarray.open_cube; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
