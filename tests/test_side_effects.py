"""A library leaves its caller's process as it found it: dask config, torch threads and RNG, logging."""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest
import torch

import geoarray
from geoarray.datasets import synthetic_cube


def _logging_state() -> tuple:
    loggers = [logging.getLogger(n) for n in ("", "geoarray", "distributed", "dask")]
    return tuple((lg.level, tuple(lg.handlers), lg.propagate) for lg in loggers)


@pytest.fixture
def caller_state():
    """Set values geoarray would never choose, and give them back after the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    torch.manual_seed(1234)
    yield
    torch.set_num_threads(threads)


def test_fit_and_predict_leave_the_callers_process_as_they_found_it(tmp_path, caller_state, caplog):
    # in memory, so the chip stream's reader threads compute dask graphs (the path that once set the global
    # scheduler) and predict runs on the caller's threaded scheduler (where torch threads are set per task)
    cube = synthetic_cube(size=96, n_times=2, seed=3, chunks=48).load()
    sched = dask.config.get("scheduler", None)
    rng = torch.random.get_rng_state().clone()
    logs = _logging_state()
    with caplog.at_level(logging.DEBUG):
        ckpt = geoarray.fit(
            cube,
            task="segmentation",
            model_kwargs={"width": 4, "depth": 2},
            chip_size=32,
            epochs=2,
            batch_size=4,
            readers=2,
            out=str(tmp_path / "m.safetensors"),
            progress=False,
        )
        assert dask.config.get("scheduler", None) == sched
        assert torch.get_num_threads() == 3
        assert torch.equal(torch.random.get_rng_state(), rng)
        out = geoarray.predict(cube, ckpt)
        mask = out["mask"].compute(scheduler="threads")
        assert torch.get_num_threads() == 3  # set inside the tasks, given back after the last one
        assert dask.config.get("scheduler", None) == sched
    assert np.isin(np.unique(mask.values), [0, 1, 2, 3, 4, 255]).all()
    assert _logging_state() == logs
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    # the library still says what it did, at INFO, for those who listen
    assert any(r.name.startswith("geoarray.training") and "epoch 2/2" in r.getMessage() for r in caplog.records)


def test_clear_caches_drops_loaded_models(tmp_path):
    from geoarray import _inference

    cube = synthetic_cube(size=64, n_times=1, seed=0, chunks=64)
    ckpt = geoarray.fit(
        cube,
        task="segmentation",
        model_kwargs={"width": 4, "depth": 2},
        chip_size=32,
        epochs=1,
        batch_size=4,
        val_fraction=0,
        out=str(tmp_path / "m.safetensors"),
        progress=False,
    )
    geoarray.predict(cube, ckpt)["mask"].compute()
    assert len(_inference._MODELS) >= 1
    geoarray.clear_caches()
    assert len(_inference._MODELS) == 0
    # the cache is bounded: many checkpoints never keep more than a few models loaded
    for i in range(_inference._MAX_MODELS + 2):
        _inference._remember(_inference._MODELS, ("sha", str(i)), object(), _inference._MAX_MODELS)
    assert len(_inference._MODELS) == _inference._MAX_MODELS
    geoarray.clear_caches()


def test_every_task_thread_gets_the_torch_thread_budget_and_its_own_count_back():
    """torch's thread count is per thread (OpenMP): two dask threads that already ran torch at all the cores
    must both run their tasks at the budget (cores // dask threads), not only the first one in."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from geoarray._threads import torch_threads

    cores = os.cpu_count() or 1
    x, w = torch.randn(1, 4, 32, 32), torch.randn(4, 4, 3, 3)
    both_in = threading.Barrier(2)

    def warm(_: int) -> int:
        torch.set_num_threads(cores)
        torch.conv2d(x, w)
        both_in.wait()  # one call per pool thread
        return torch.get_num_threads()

    def task(_: int) -> int:
        with torch_threads():
            both_in.wait()  # both tasks run at the same time, each in its own thread
            inside = torch.get_num_threads()
            torch.conv2d(x, w)
        return inside

    def count(_: int) -> int:
        both_in.wait()
        return torch.get_num_threads()

    with ThreadPoolExecutor(2) as pool, dask.config.set(num_workers=cores):
        assert list(pool.map(warm, range(2))) == [cores, cores]
        assert list(pool.map(task, range(2))) == [1, 1]
        assert list(pool.map(count, range(2))) == [cores, cores]  # each thread got its own count back
