"""The GPU path in one command: predict on a dask-cuda cluster, a DDP fit over nccl, and the gpu-marked tests.

On a machine with CUDA (and ``pip install geoarray[gpu]``):

1. ``import dask_cuda`` works (the extra is complete).
2. predict on a ``LocalCUDACluster`` (one worker per GPU, ``device="cuda"``) of a Zarr cube, checked against
   the CPU path (threaded scheduler, ``device="cpu"``) on the same cube and checkpoint, with its throughput.
3. ``fit(..., client=client)`` with one DDP rank per GPU over nccl (2 ranks with two GPUs or more; with one
   GPU, one rank, and it says so), beside the same fit on CPU workers over gloo; the GPU checkpoint then
   predicts on CPU and GPU alike (same tolerance).
4. ``pytest -m gpu``: every gpu-marked test must run and pass; a skipped one fails this check.

Tolerance. On CUDA, float32 convolutions run in TF32 by default (torch's ``cudnn.allow_tf32``: a 10-bit
mantissa, relative error ~5e-4 per product) and cuDNN sums in another order than oneDNN on CPU. For the
small UNet here the logits differ by ~1e-3, and a softmax moves a probability by at most half the change of
the logit gap, so: probabilities within ``ATOL = 1e-2`` of the CPU's, and the mask equal to the CPU's
wherever the CPU's top-two probabilities differ by more than ``2 * ATOL`` (elsewhere a tie may flip), and on
at least 99.9 % of pixels overall. The fit check compares the best epoch's validation score of GPU and CPU
runs within ``FIT_TOL`` (they follow different sums, and cuDNN picks nondeterministic kernels).

Without CUDA it prints "no CUDA device: skipped" and exits 0.

    .venv/bin/python benchmarks/gpu_check.py [--size 2048] [--epochs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ATOL = 1e-2
FIT_TOL = 0.1
REPO = Path(__file__).resolve().parents[1]
DRY = {"on": False}  # --cpu-dry-run: the same steps on CPU workers, to check this script without a GPU


def gpu_cluster(**kw):  # type: ignore[no-untyped-def]
    if DRY["on"]:
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=kw.pop("n_workers", 1),
            threads_per_worker=1,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
    from dask_cuda import LocalCUDACluster

    return LocalCUDACluster(**kw)


def gpu() -> str:
    return "cpu" if DRY["on"] else "cuda"


def check_dask_cuda() -> None:
    try:
        import dask_cuda
    except ImportError as e:
        sys.exit(f"FAIL: import dask_cuda: {e}. Install the extra: pip install 'geoarray[gpu]'.")
    import dask
    import dask_cuda

    print(f"dask-cuda {dask_cuda.__version__} imports (dask {dask.__version__})")


def predict_check(store: Path, ckpt: Path, n_gpus: int) -> None:
    import dask
    import numpy as np
    from distributed import Client

    import geoarray

    cube = geoarray.open_cube(store)
    px = cube.sizes["time"] * cube.sizes["y"] * cube.sizes["x"]
    with dask.config.set(scheduler="threads"):
        t0 = time.perf_counter()
        cpu = geoarray.predict(cube, ckpt, device="cpu")[["probabilities", "mask"]].compute()
        t_cpu = time.perf_counter() - t0
    extra = {"n_workers": n_gpus} if DRY["on"] else {}
    with gpu_cluster(dashboard_address=None, **extra) as lc, Client(lc) as client:
        workers = len(client.scheduler_info()["workers"])
        geoarray.predict(cube.isel(y=slice(0, 512), x=slice(0, 512)), ckpt, device=gpu()).compute()  # warm-up
        t0 = time.perf_counter()
        on_gpu = geoarray.predict(cube, ckpt, device=gpu())[["probabilities", "mask"]].compute()
        t_gpu = time.perf_counter() - t0
    p_cpu, p_gpu = cpu.probabilities.values, on_gpu.probabilities.values
    diff = float(np.nanmax(np.abs(p_cpu - p_gpu)))
    top2 = np.sort(p_cpu, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * ATOL
    m_cpu, m_gpu = cpu["mask"].values, on_gpu["mask"].values
    agree = float((m_cpu == m_gpu).mean())
    flips_clear = int(((m_cpu != m_gpu) & clear).sum())
    print(
        f"predict on {'LocalCluster (dry run)' if DRY['on'] else 'LocalCUDACluster'} ({workers} workers, "
        f"{n_gpus} GPUs): {px / t_gpu / 1e6:.1f} Mpx/s "
        f"(CPU threaded: {px / t_cpu / 1e6:.1f} Mpx/s, x{t_cpu / t_gpu:.1f})"
    )
    print(
        f"  vs CPU: max |dp| {diff:.2e} (tolerance {ATOL:g}); mask agrees on {agree:.4%} of pixels, "
        f"{flips_clear} flips where the CPU margin > {2 * ATOL:g}"
    )
    if workers != n_gpus:
        sys.exit(f"FAIL: LocalCUDACluster started {workers} workers for {n_gpus} GPUs; expected one per GPU.")
    if not diff <= ATOL or flips_clear or agree < 0.999:
        sys.exit("FAIL: the GPU predict differs from the CPU path beyond the tolerance.")


def fit_check(store: Path, out: Path, n_gpus: int, epochs: int) -> Path:
    from distributed import Client

    import geoarray
    from geoarray.checkpoint import load_checkpoint
    from geoarray.distributed import cluster

    ranks = min(2, n_gpus)
    if n_gpus == 1:
        print("one GPU: the DDP fit runs 1 nccl rank (2 ranks need 2 GPUs)")
    cube = geoarray.open_cube(store)
    kw = dict(task="segmentation", model="unet", chip_size=64, epochs=epochs, batch_size=8, seed=0, progress=False)
    with gpu_cluster(n_workers=ranks, dashboard_address=None) as lc, Client(lc) as client:
        t0 = time.perf_counter()
        g = geoarray.fit(cube, client=client, device=gpu(), out=out / "gpu.safetensors", **kw)
        t_gpu = time.perf_counter() - t0
    with cluster(gpus=False, n_workers=ranks) as client:
        t0 = time.perf_counter()
        c = geoarray.fit(cube, client=client, device="cpu", out=out / "cpu.safetensors", **kw)
        t_cpu = time.perf_counter() - t0
    tg, tc = load_checkpoint(g).meta["training"], load_checkpoint(c).meta["training"]
    sg, sc = float(tg["best_metric"]), float(tc["best_metric"])
    how = "gloo on CPU workers (dry run)" if DRY["on"] else "nccl on GPU"
    print(
        f"DDP fit, {ranks} rank(s): {how} {t_gpu:.1f} s, gloo on CPU {t_cpu:.1f} s; best validation score "
        f"GPU {sg:.4f} vs CPU {sc:.4f} (tolerance {FIT_TOL:g})"
    )
    if tg.get("world_size") != ranks:
        sys.exit(f"FAIL: the GPU fit ran {tg.get('world_size')} DDP rank(s); expected {ranks}.")
    if abs(sg - sc) > FIT_TOL:
        sys.exit("FAIL: the GPU fit's validation score is far from the CPU fit's.")
    return g


def gpu_tests(tmp: Path) -> None:
    xml = tmp / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    rc = subprocess.call(cmd, cwd=REPO)
    suite = ET.parse(xml).getroot().iter("testsuite").__next__()
    n, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    print(f"gpu-marked tests: {n} collected, {skipped} skipped, {bad} failed")
    if rc != 0 or bad or skipped or n == 0:
        sys.exit("FAIL: every gpu-marked test must run and pass on a machine with CUDA.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest -m gpu step")
    ap.add_argument("--cpu-dry-run", type=int, default=0, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.cpu_dry_run:  # exercises every step on N CPU workers (device "cpu"): a check of this script only
        DRY["on"], n_gpus, args.no_tests = True, args.cpu_dry_run, True
        print(f"CPU DRY RUN on {n_gpus} CPU workers: no GPU is involved, the figures say nothing about GPUs")
    if n_gpus == 0:
        print("no CUDA device: skipped")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import load_report, make_ckpt, make_store, workdir

    import geoarray
    from geoarray.datasets import synthetic_cube

    if not DRY["on"]:
        print(load_report(), f"| {n_gpus} GPU(s): {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        check_dask_cuda()
    wd = workdir("gpu")
    store = make_store(wd / f"img_{args.size}.zarr", times=2, size=args.size, bands=4)
    ckpt = make_ckpt(wd / "unet.safetensors", "unet", 4, num_classes=3, width=16, depth=3)
    predict_check(store, ckpt, n_gpus)
    labelled = wd / "labelled.zarr"
    if not labelled.exists():
        geoarray.write_cube(synthetic_cube(size=512, n_times=2, seed=0), labelled, chunk=256)
    trained = fit_check(labelled, wd, n_gpus, args.epochs)
    predict_check(labelled, trained, n_gpus)
    if not args.no_tests:
        gpu_tests(wd)
    print("GPU path: OK")


if __name__ == "__main__":
    main()
