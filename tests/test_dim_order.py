"""Dims are found by name: a cube in another dim order trains and predicts like the canonical one."""

from __future__ import annotations

import numpy as np

import geoarray
from geoarray.datasets import synthetic_cube


def test_fit_and_predict_take_another_dim_order(tmp_path):
    cube = synthetic_cube(size=128, n_times=2, seed=2, chunks=64)
    odd = cube.transpose("band", "time", "x", "y")
    assert odd["imagery"].dims == ("band", "time", "x", "y")
    kw = dict(
        task="segmentation",
        model_kwargs={"width": 4, "depth": 2},
        chip_size=32,
        epochs=1,
        batch_size=8,
        progress=False,
        augment=False,
    )
    a = geoarray.fit(cube, out=str(tmp_path / "a.safetensors"), **kw)
    b = geoarray.fit(odd, out=str(tmp_path / "b.safetensors"), **kw)
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    pa = geoarray.predict(cube, a)["probabilities"].compute()
    pb = geoarray.predict(odd, a)["probabilities"].compute()
    assert pb.dims == ("time", "class", "y", "x")
    np.testing.assert_allclose(pb.values, pa.values, rtol=0, atol=1e-6)
