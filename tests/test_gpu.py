"""The GPU path. ``gpu``-marked tests need CUDA and run with ``pytest -m gpu`` (benchmarks/gpu_check.py runs
them and fails if one is skipped where CUDA exists); the extra's import check runs wherever dask-cuda is."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

import geoarray
from geoarray.datasets import synthetic_cube

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed("dask-cuda"), reason="the gpu extra (dask-cuda) is not installed")
def test_the_gpu_extra_imports():
    """``pip install geoarray[gpu]`` once gave a dask-cuda that failed on import (cuda.core needs cuda-bindings,
    which dask-cuda declares only in its cu12/cu13 extras). No GPU is needed to import it."""
    import dask_cuda
    from dask_cuda import LocalCUDACluster

    assert dask_cuda.__version__ and LocalCUDACluster


@pytest.mark.gpu
@needs_cuda
def test_predict_on_cuda_matches_the_cpu(tmp_path):
    """Same checkpoint, same cube: CUDA (TF32 convolutions by default) within 1e-2 of the CPU's probabilities,
    and the same mask wherever the CPU's top-two margin exceeds 2e-2 (see benchmarks/gpu_check.py)."""
    from geoarray.models import create_model

    cube = synthetic_cube(size=256, n_times=2, seed=0, chunks=128)
    bands = [str(b) for b in cube.band.values]
    torch.manual_seed(0)
    model = create_model("unet", in_channels=len(bands), num_classes=3, width=8, depth=2)
    ck = geoarray.save_checkpoint(
        tmp_path / "m.safetensors", model, task="segmentation", bands=bands, mean=[0.3] * 4, std=[0.2] * 4
    )
    cpu = geoarray.predict(cube, ck, device="cpu")[["probabilities", "mask"]].compute()
    gpu = geoarray.predict(cube, ck, device="cuda")[["probabilities", "mask"]].compute()
    p_cpu, p_gpu = cpu.probabilities.values, gpu.probabilities.values
    ok = np.isfinite(p_cpu)
    np.testing.assert_array_equal(ok, np.isfinite(p_gpu))
    assert np.abs(p_cpu[ok] - p_gpu[ok]).max() <= 1e-2
    top2 = np.sort(np.nan_to_num(p_cpu), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2e-2
    np.testing.assert_array_equal(cpu["mask"].values[clear], gpu["mask"].values[clear])


@pytest.mark.gpu
@needs_cuda
def test_ddp_fit_runs_nccl_ranks_on_cuda_workers(tmp_path):
    """One rank per GPU (at most 2) over nccl, on a dask-cuda cluster; the checkpoint it writes predicts."""
    from dask_cuda import LocalCUDACluster
    from distributed import Client

    from geoarray.checkpoint import load_checkpoint

    store = tmp_path / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=256, n_times=2, seed=0), store, chunk=128)
    cube = geoarray.open_cube(store)
    ranks = min(2, torch.cuda.device_count())
    with LocalCUDACluster(n_workers=ranks, dashboard_address=None) as lc, Client(lc) as client:
        on_workers = client.run(lambda: __import__("torch").cuda.is_available())
        assert len(on_workers) == ranks and all(on_workers.values())
        out = geoarray.fit(
            cube, task="segmentation", model="unet", model_kwargs={"width": 8, "depth": 2}, chip_size=64,
            epochs=1, batch_size=4, client=client, device="cuda", out=tmp_path / "m.safetensors", progress=False,
        )  # fmt: skip
    meta = load_checkpoint(out).meta
    assert meta["training"]["epoch"] >= 1 and meta["training"]["world_size"] == ranks
    pred = geoarray.predict(cube, out, device="cuda")["mask"].isel(time=0).values
    assert pred.shape == (256, 256) and set(np.unique(pred)) <= set(range(5)) | {255}
