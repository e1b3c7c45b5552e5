"""predict loads a checkpoint to check it; its tasks in the same process reuse that model, not the file."""

from __future__ import annotations

import dask
import numpy as np
from conftest import make_checkpoint

import geoarray
from geoarray import _inference
from geoarray.datasets import synthetic_cube
from geoarray.predict import clear_caches


def test_threaded_predict_reads_the_checkpoint_once_and_matches_a_fresh_load(tmp_path):
    """On threads, the blocks take the model predict loaded (no second load of the file, where one thread would
    load it while the other waits), and the outputs equal those of a model the tasks load themselves."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=3, classes=["a", "b", "c"], width=4, depth=2, seed=3)
    cube = synthetic_cube(size=(96, 96), n_times=2, seed=4).chunk(time=1, y=48, x=48)
    clear_caches()
    before = _inference.LOADS
    with dask.config.set(scheduler="threads", num_workers=2):
        out = geoarray.predict(cube, ckpt).compute()
    assert _inference.LOADS == before  # the tasks took predict's own model

    # A model the tasks load from the file themselves (what a worker process does) gives the same numbers.
    planned = geoarray.predict(cube, ckpt)
    clear_caches()
    with dask.config.set(scheduler="threads", num_workers=2):
        fresh = planned.compute()
    assert _inference.LOADS == before + 1
    np.testing.assert_array_equal(out["mask"].values, fresh["mask"].values)
    np.testing.assert_allclose(out["probabilities"].values, fresh["probabilities"].values, rtol=0, atol=1e-6)
    clear_caches()
