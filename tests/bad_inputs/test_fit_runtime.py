"""Bad runtime inputs to fit (paths, resume, cluster sizes): a TrainError before any training step."""

from __future__ import annotations

import time

import pytest

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError

SMALL = dict(
    task="segmentation", model_kwargs={"width": 4, "depth": 2}, chip_size=32, batch_size=4, progress=False
)


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=128, n_times=1, seed=0, chunks=64)


@pytest.fixture(scope="module")
def trained(cube, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "unet.safetensors"
    return geoarray.fit(cube, epochs=1, out=str(out), **SMALL)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p, t: {"out": str(p)}, "is a directory"),
        (lambda p, t: {"out": str(p / "f.txt" / "m.safetensors")}, "is a file, not a folder"),
        (lambda p, t: {"out": str(p / "m.safetensors"), "log_dir": str(p / "f.txt")}, "log_dir=.*is a file"),
        (
            lambda p, t: {"out": str(p / "m.safetensors"), "resume": str(p / "nope.safetensors")},
            "does not exist",
        ),
        (
            lambda p, t: {
                "out": str(p / "m.safetensors"),
                "resume": str(t),
                "model": "res_unet",
                "model_kwargs": {},
            },
            "holds a 'unet' model",
        ),
        (
            lambda p, t: {
                "out": str(p / "m.safetensors"),
                "resume": str(t),
                "model_kwargs": {"width": 8, "depth": 2},
            },
            "does not fit",
        ),
    ],
    ids=[
        "out-is-dir",
        "out-parent-is-file",
        "log-dir-is-file",
        "resume-missing",
        "resume-other-model",
        "resume-other-hparams",
    ],
)
def test_fit_refuses_bad_paths_before_training(cube, trained, tmp_path, make, match):
    (tmp_path / "f.txt").write_text("not a folder")
    opts = dict(SMALL, epochs=3)
    opts.update(make(tmp_path, trained))
    t0 = time.perf_counter()
    with pytest.raises(TrainError, match=match):
        geoarray.fit(cube, **opts)
    assert time.perf_counter() - t0 < 30  # refused up front (training 3 epochs would take longer on 2 cores)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_cluster_refuses_a_bad_size_before_starting(n):
    from geoarray.distributed import cluster

    with pytest.raises(TrainError, match="expected a positive integer"), cluster(n_workers=n):
        pass
