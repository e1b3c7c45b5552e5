"""Where predict's model comes from and runs: the model predict loaded to check the checkpoint serves its tasks
on threads; under a distributed client, device="auto" is each worker's own choice."""

from __future__ import annotations

import dataclasses

import dask
import numpy as np
import pytest
import torch
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA worker runs whole blocks: another rounding")
def test_auto_device_is_the_workers_choice_and_keeps_cpu_tiles(tmp_path, local_cluster):
    """Planned under a distributed client, device="auto" is left to each worker (a GPU node reached from a login
    node without one must still use its GPU); a CPU worker then runs in the CPU tiles, so a 1024² block gives
    the same bytes as a threaded run on device="cpu"."""
    from geoarray._inference import RunSpec, on_device
    from geoarray.errors import PredictError

    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=3, classes=["a", "b", "c"], width=4, depth=2, seed=5)
    cube = synthetic_cube(size=(1024, 1024), n_times=1, seed=8).chunk(time=1, y=1024, x=1024)
    with dask.config.set(scheduler="threads", num_workers=1):
        ref = geoarray.predict(cube, ckpt, device="cpu").compute()
    with local_cluster.as_current():
        planned = geoarray.predict(cube, ckpt)  # device="auto"
        tasks = dict(planned["mask"].data.dask).values()
        specs = {a.run for t in tasks if isinstance(t, tuple) for a in t if hasattr(a, "run")}  # the BlockSpecs
        try:
            got = local_cluster.compute(planned[["probabilities", "mask"]]).result()
        finally:  # the session's cluster is shared: leave its workers' model caches empty, as other tests expect
            local_cluster.run(clear_caches)
    assert {s.device for s in specs} == {"auto"} and {s.tile for s in specs} == {512}
    np.testing.assert_array_equal(got["mask"].values, ref["mask"].values)
    np.testing.assert_array_equal(got["probabilities"].values, ref["probabilities"].values)

    spec = RunSpec("m", "0" * 64, "auto", "segmentation", "image", ("mask",), 3, "float32", "uint8", 255, 0.5,
                   None, ((0.0,), (1.0,), 1.0), tile=512)  # fmt: skip
    here = on_device(spec)  # what a CPU worker makes of it
    assert (here.device, here.tile, here.precision) == ("cpu", 512, "32")
    spec = dataclasses.replace(spec, precision="16")
    with pytest.raises(PredictError, match=r"precision='16' \(float16 autocast\) needs a CUDA GPU"):
        on_device(spec)  # a CPU worker refuses float16, as predict does up front on a local run
