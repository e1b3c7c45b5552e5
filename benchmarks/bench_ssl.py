"""B6: Barlow Twins pixel time-series training throughput, geoarray's fit vs a plain PyTorch loop, and its memory.

Side by side in one run, on the same phenology cube (``geoarray.datasets.phenology_cube``: 24 dates, 6 bands,
clouds), the same model (``pixel_mlp`` 24 dates -> 32 features + the 128-d projector), the same batch (256
pixels, two views of 8 valid dates each) and the same number of optimizer steps:

- geoarray: ``fit(task="barlow_twins")`` streaming pixels from the Zarr cube (block reads in 2 threads,
  normalisation, per-window sampling, views, loss, collapse watch). Validation is off (``val_fraction=0``) and
  the figure is the steady-state steps/s from the epochs after the first (the first pays for statistics).
- plain: what the BTFM seed does: every pixel's series already in memory as one numpy array ``(P, T, C)``
  (loaded and normalised before the clock starts), random batches, the same views and loss, no watch.

Pixels/s = steps x batch / seconds. Goal: geoarray / plain >= 0.9. Then the peak RSS of geoarray's fit on a
cube 1x and 4x the area (separate processes, the same number of steps): goal ratio <= 1.2.

Where geoarray's extra time goes, the stream alone (no model): CPU per batch of its main thread (sampling,
normalising, batch assembly: what adds onto each step) and of the whole process (the block reads, zarr decoding
in the reader threads, included), the best of a few epochs.

    .venv/bin/python benchmarks/bench_ssl.py [--size 256] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import load_report, workdir

MODEL = {"num_timesteps": 24, "hidden": 128, "out_channels": 32}
BATCH, VIEW = 256, 8

CHILD = """
import json, resource, sys, time
import torch
import geoarray
torch.set_num_threads(int(sys.argv[4]))
store, steps, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cube = geoarray.open_cube(store)
times = []
import geoarray.training.loop as loop
orig = loop.Trainer._train_epoch
def timed(self, *a, **k):
    t = time.perf_counter(); r = orig(self, *a, **k); times.append(time.perf_counter() - t); return r
loop.Trainer._train_epoch = timed
geoarray.fit(cube, task="barlow_twins", model="pixel_mlp", model_kwargs=json.loads(sys.argv[5]),
             task_kwargs={"view_dates": int(sys.argv[6])}, chip_size=32, pixels_per_chip=256,
             batch_size=int(sys.argv[7]),
             epochs=epochs, steps_per_epoch=steps, val_fraction=0.0, lr=3e-3, progress=False,
             out=store + ".bt.safetensors")
print(json.dumps({"epoch_s": times, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_cube(path, size: int):
    import geoarray
    from geoarray.datasets import phenology_cube

    if not path.exists():
        geoarray.write_cube(phenology_cube(size=size, n_times=24, seed=0), path, chunk=128)
    return path


def geoarray_run(store, steps: int, epochs: int, threads: int) -> dict:
    args = [str(store), str(steps), str(epochs), str(threads), json.dumps(MODEL), str(VIEW), str(BATCH)]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plain_run(store, steps: int, epochs: int, threads: int) -> list[float]:
    """The seed's loop: all series in memory, random batches, views and loss as geoarray makes them."""
    import numpy as np
    import torch

    import geoarray
    from geoarray.models import create_model
    from geoarray.tasks._ssl import TwinNet, pixel_views, projector
    from geoarray.tasks.barlow_twins import barlow_twins_loss

    torch.set_num_threads(threads)
    cube = geoarray.open_cube(store)
    img = cube.imagery.values  # (T, C, y, x)
    ok = cube.valid.values & np.isfinite(img).all(1)
    mean = np.nanmean(np.where(ok[:, None], img, np.nan), axis=(0, 2, 3), keepdims=True)
    std = np.nanstd(np.where(ok[:, None], img, np.nan), axis=(0, 2, 3), keepdims=True)
    x = np.where(ok[:, None], (img - mean) / std, 0).astype(np.float32)
    series = torch.from_numpy(np.ascontiguousarray(x.reshape(*x.shape[:2], -1).transpose(2, 0, 1)))
    valid = torch.from_numpy(np.ascontiguousarray(ok.reshape(ok.shape[0], -1).T))
    doy = torch.from_numpy(cube.time.dt.dayofyear.values.astype(np.float32))
    torch.manual_seed(0)
    model = create_model("pixel_mlp", in_channels=x.shape[1], **MODEL)
    net = TwinNet(model, projector(32, 128, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(len(series), (BATCH,), generator=g)
            xv, dv, mv, keep = pixel_views(series[idx], doy.expand(BATCH, -1), valid[idx], VIEW, 0.05, g)
            n = int(keep.sum())
            _, proj = net(xv, dv, mv)
            loss = barlow_twins_loss(proj[:n], proj[n:], 10 / 128)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def stream_cost(store, epochs: int = 4) -> tuple[float, float]:
    """The pixel stream as fit builds it, without a model: (main-thread, whole-process) CPU ms per batch."""
    import geoarray
    from geoarray.chips import ChipStream, plan_chips

    cube = geoarray.open_cube(store)
    plan = plan_chips(cube, chip_size=32, times="all", val_fraction=0.0)
    n = cube.sizes["band"]
    s = ChipStream(
        cube,
        plan.train,
        plan,
        bands=list(cube.band.values),
        mean=[0.0] * n,
        std=[1.0] * n,
        kind="pixels",
        labels=None,
        batch_size=BATCH,
        pixels_per_window=256,
        min_batch=2,
    )
    main_ms, all_ms = [], []
    for _ in range(epochs):
        t, p = time.thread_time(), time.process_time()
        k = sum(1 for _ in s)
        main_ms.append((time.thread_time() - t) * 1e3 / k)
        all_ms.append((time.process_time() - p) * 1e3 / k)
    return min(main_ms), min(all_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="base cube side (the 4x cube is twice as wide)")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both runs)")
    args = ap.parse_args()
    wd = workdir("b6")
    small = make_cube(wd / f"pheno{args.size}.zarr", args.size)
    big = make_cube(wd / f"pheno{2 * args.size}.zarr", 2 * args.size)
    print(load_report())
    print(
        f"pixel_mlp {MODEL}, batch {BATCH}, views of {VIEW} dates, {args.steps} steps x {args.epochs} epochs"
    )
    px = args.steps * BATCH
    ga = geoarray_run(small, args.steps, args.epochs, args.threads)
    pl = plain_run(small, args.steps, args.epochs, args.threads)
    g = px / min(ga["epoch_s"][1:] or ga["epoch_s"])  # steady state: epochs after the first
    p = px / min(pl[1:] or pl)
    print(f"  geoarray fit (Zarr stream) : {g:9.0f} pixels/s")
    print(f"  plain loop (numpy in RAM)  : {p:9.0f} pixels/s")
    print(f"B6 throughput ratio geoarray/plain: {g / p:.2f} (target >= 0.9)")
    main_ms, all_ms = stream_cost(small)
    print(
        f"  stream alone, CPU per batch of {BATCH}: main thread {main_ms:.2f} ms, "
        f"all threads (block reads included) {all_ms:.2f} ms"
    )
    gb = geoarray_run(big, args.steps, args.epochs, args.threads)
    print(f"  peak RSS {args.size}²: {ga['peak_mb']:.0f} MB   {2 * args.size}² (4x): {gb['peak_mb']:.0f} MB")
    print(f"B6 peak RSS ratio 4x/base: {gb['peak_mb'] / ga['peak_mb']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
