"""The GPU path. ``gpu``-marked tests need CUDA and run with ``pytest -m gpu`` (benchmarks/gpu_check.py runs
them and fails if one is skipped where CUDA exists); the extra's import check runs wherever dask-cuda is; the GPU
decisions (which GPU a DDP rank takes, init_process_group's arguments, bf16 by compute capability, why a CUDA
cluster did not start) and gpu_check's no-CUDA exit are checked on any machine."""

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


def _cube_and_unet(tmp_path):
    """A 2-date 256² synthetic cube in 128² chunks and a small seeded 3-class UNet checkpoint on its bands."""
    from geoarray.models import create_model

    cube = synthetic_cube(size=256, n_times=2, seed=0, chunks=128)
    bands = [str(b) for b in cube.band.values]
    torch.manual_seed(0)
    model = create_model("unet", in_channels=len(bands), num_classes=3, width=8, depth=2)
    ck = geoarray.save_checkpoint(
        tmp_path / "m.safetensors", model, task="segmentation", bands=bands, mean=[0.3] * 4, std=[0.2] * 4
    )
    return cube, ck


@pytest.mark.gpu
@needs_cuda
def test_predict_on_cuda_matches_the_cpu(tmp_path):
    """Same checkpoint, same cube: CUDA (TF32 convolutions by default) within 1e-2 of the CPU's probabilities,
    and the same mask wherever the CPU's top-two margin exceeds 2e-2 (see benchmarks/gpu_check.py)."""
    cube, ck = _cube_and_unet(tmp_path)
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



@pytest.mark.gpu
@needs_cuda
def test_predict_under_autocast_on_cuda(tmp_path):
    """precision="16" (and "bf16" on Ampere or newer; below it, the clear refusal) on the GPU, against float32 on
    the same GPU: float16 rounds each layer's output to 11 bits (2^-11 ~ 5e-4 relative), so probabilities within
    2e-2 and the same mask wherever the float32 top-two margin exceeds 4e-2; bf16 (8 bits) within 1e-1, margin
    2e-1. Outputs come back float32 with the precision in their attrs."""
    from geoarray._devices import gpu_has_bf16
    from geoarray.errors import PredictError

    cube, ck = _cube_and_unet(tmp_path)
    ref = geoarray.predict(cube, ck, device="cuda")[["probabilities", "mask"]].compute()
    p32 = ref.probabilities.values
    ok = np.isfinite(p32)
    top2 = np.sort(np.nan_to_num(p32), axis=1)[:, -2:]
    runs = [("16", 2e-2)]
    if gpu_has_bf16(torch.cuda.get_device_capability(0)):
        runs.append(("bf16", 1e-1))
    else:
        with pytest.raises(PredictError, match=r"precision='bf16' needs a GPU with bfloat16"):
            geoarray.predict(cube, ck, device="cuda", precision="bf16")
    for precision, tol in runs:
        out = geoarray.predict(cube, ck, device="cuda", precision=precision)[["probabilities", "mask"]].compute()
        p = out.probabilities
        assert p.dtype == np.float32 and p.attrs["precision"] == precision
        assert np.abs(p.values[ok] - p32[ok]).max() <= tol, precision
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
        np.testing.assert_array_equal(out["mask"].values[clear], ref["mask"].values[clear])


@pytest.mark.gpu
@needs_cuda
def test_fit_on_cuda_in_float16_saves_a_checkpoint(tmp_path):
    """A single-process fit on the GPU under float16 autocast with a GradScaler: the checkpoint is written (its
    receptive field is measured by running the CUDA model) with the same halo as the same model's on the CPU,
    and its score is finite."""
    from geoarray.checkpoint import load_checkpoint

    store = tmp_path / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=256, n_times=2, seed=0), store, chunk=128)
    kw = dict(
        task="segmentation", model="unet", model_kwargs={"width": 8, "depth": 2}, chip_size=64, epochs=1,
        batch_size=4, progress=False,
    )  # fmt: skip
    gpu = geoarray.fit(geoarray.open_cube(store), device="cuda", precision="16", out=tmp_path / "g.safetensors", **kw)
    cpu = geoarray.fit(geoarray.open_cube(store), device="cpu", out=tmp_path / "c.safetensors", **kw)
    g, c = load_checkpoint(gpu).meta, load_checkpoint(cpu).meta
    assert g["halo"] == c["halo"] > 0
    assert np.isfinite(float(g["training"]["best_metric"]))


# -- the GPU decisions, checked here on the CPU (no CUDA device is faked: these are the pure decisions) --------


def _physical(infos, picks):
    """(host, device) each rank ends on: its pick-th visible device (by CUDA_VISIBLE_DEVICES, else by index)."""
    out = []
    for (host, visible, count), i in zip(infos, picks, strict=True):
        ids = visible.split(",")[:count] if visible else [str(j) for j in range(count)]
        out.append((host, ids[i]))
    return out


def _dask_cuda(order, n):
    """What dask-cuda's workers see (dask_cuda.utils.cuda_visible_devices: worker i's own GPU first), taken in
    ``order`` (ranks follow the sorted worker addresses, not dask-cuda's worker index)."""
    return [("node", ",".join(map(str, [*range(i, n), *range(i)])), n) for i in order]


@pytest.mark.parametrize(
    "infos, want",
    [
        (_dask_cuda([1, 0], 2), [0, 0]),  # rank 0 on the worker of GPU 1: cuda:0 there is GPU 1, not cuda:{rank}
        (_dask_cuda([2, 0, 3, 1], 4), [0, 0, 0, 0]),
        ([("node", None, 2)] * 2, [0, 1]),  # a plain LocalCluster: both see every GPU, one each (LOCAL_RANK)
        ([("node", "0,1", 2)] * 2, [0, 1]),  # a Slurm job's one CUDA_VISIBLE_DEVICES for two worker processes
        ([("node", "GPU-aa", 1), ("node", "GPU-bb", 1)], [0, 0]),  # one GPU bound per worker, by UUID
        ([("a", None, 1), ("b", None, 1), ("a", "1", 1)], [0, 0, 0]),  # two hosts, counted apart
    ],
)
def test_every_nccl_rank_gets_its_own_gpu(infos, want):
    """``rank % device_count`` put two ranks of a dask-cuda cluster on one GPU (worker i lists its own GPU
    first), which NCCL refuses; each rank now takes the first device of its list that no other rank of its host
    holds."""
    from geoarray.training.ddp import rank_gpus

    picks = rank_gpus(infos)
    assert picks == want
    ends = _physical(infos, picks)
    assert len(set(ends)) == len(ends)


def test_more_nccl_ranks_than_gpus_is_a_clear_error():
    from geoarray.errors import TrainError
    from geoarray.training.ddp import rank_gpus

    with pytest.raises(TrainError, match=r"one GPU per rank, but host 'node' runs 3 ranks.*device='cpu'"):
        rank_gpus([("node", None, 2)] * 3)


def test_init_process_group_arguments():
    """nccl binds the rank's device (``device_id``, so barrier() and the communicator use it); gloo, as before,
    does not. The keywords are checked against torch's own signature."""
    import datetime
    import inspect

    import torch.distributed as dist

    from geoarray.training.ddp import init_kwargs

    nccl = init_kwargs("nccl", "10.0.0.1", 29500, 1, 2, 60.0, 0)
    gloo = init_kwargs("gloo", "10.0.0.1", 29500, 1, 2, 60.0, None)
    assert nccl.pop("device_id") == torch.device("cuda", 0)
    common = {"init_method": "tcp://10.0.0.1:29500", "rank": 1, "world_size": 2}
    assert nccl == {"backend": "nccl", **common, "timeout": datetime.timedelta(seconds=60)}
    assert gloo == {"backend": "gloo", **common, "timeout": datetime.timedelta(seconds=60)}
    sig = inspect.signature(dist.init_process_group)
    sig.bind(**init_kwargs("nccl", "h", 1, 0, 1, 5.0, 3))
    with pytest.raises(ValueError, match="needs its CUDA device index"):
        init_kwargs("nccl", "h", 1, 0, 1, 5.0, None)


def test_receptive_field_runs_where_the_model_is():
    """save_checkpoint measures the receptive field by running the model; its probe inputs were CPU float32
    whatever the model's device and dtype, so saving a CUDA model (every GPU fit) failed. A float64 model shows
    it here: the same radius as in float32."""
    from geoarray.models import create_model, receptive_field

    torch.manual_seed(0)
    m = create_model("unet", in_channels=3, num_classes=2, width=8, depth=2)
    d = create_model("unet", in_channels=3, num_classes=2, width=8, depth=2).double()
    d.load_state_dict(m.state_dict())
    assert receptive_field(d) == receptive_field(m) > 0


@pytest.mark.parametrize(
    "cap, native", [((6, 1), False), ((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 9), True), ((12, 0), True)]
)
def test_bf16_needs_an_ampere_or_newer_gpu(cap, native):
    """``torch.cuda.is_bf16_supported()`` also says True where bf16 is only emulated (its default
    ``including_emulation=True``: a T4 or V100), so predict's and fit's "Ampere or newer" check never refused."""
    from geoarray._devices import gpu_has_bf16

    assert gpu_has_bf16(cap) is native


def test_why_the_cuda_cluster_did_not_start():
    """cluster() said "dask-cuda is unavailable ... pip install geoarray[gpu]" for any failure, also when
    dask-cuda was there and refused more workers than GPUs (its "Can not scale beyond visible devices")."""
    from geoarray.distributed import cuda_cluster_problem

    missing = cuda_cluster_problem(ImportError("cannot import name 'bindings' from 'cuda'"), None)
    assert "cannot be imported" in missing and "pip install 'geoarray[gpu]'" in missing
    many = cuda_cluster_problem(ValueError("Can not scale beyond visible devices", [0, 1]), 4)
    assert "did not start (n_workers=4: at most one worker per GPU): ValueError" in many
    assert "pip install" not in many


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_check_without_cuda_exits_0_and_says_skipped():
    """``benchmarks/gpu_check.py`` on a machine without CUDA: exit status 0, one line, nothing started."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, "no CUDA device: skipped\n"), r.stderr[-2000:]
