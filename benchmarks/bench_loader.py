"""B2: chip loader patches/s vs xbatcher (BatchGenerator + torch DataLoader), and vs the zarr decode limit.

Same Zarr cube for all (8-band uint16 reflectance-like values 1000..6000, 512² chunks; ``--zeros``: all 0,
which decodes far faster than any real imagery), 256² patches, batches of 16, grid and random order.
- geoarray: ``ChipStream`` (block reads in 2 threads, chips cut from each chunk read, normalised into the
  batch in 2 threads, shuffled). Random windows are uniform over the scene and cross chunk edges: a block is
  read with the strip of its neighbours its windows reach (more chunk decodes than grid windows need).
- xbatcher: ``BatchGenerator(input_dims={y: 256, x: 256})`` wrapped in ``xbatcher.loaders.torch.MapDataset`` and
  a torch ``DataLoader`` (shuffle for random order; 0 workers: forked workers + zarr v3 are unsafe).
- decode limit: zarr-python reads of every chunk in 2 threads, converted to patches/s (4 per chunk).
Every figure is the best of ``--rounds`` runs (the machine is shared); CPU ms per patch (all threads of this
process) is printed beside it, a figure a loaded machine distorts less than wall time.
Also: the loader-bound fraction of a UNet training step (real loader vs synthetic in-memory tensors).

    .venv/bin/python benchmarks/bench_loader.py [--size 2048] [--zeros]    (needs: pip install xbatcher)
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import zarr
from _common import load_report, make_store, workdir

import geoarray
from geoarray.chips import ChipStream, plan_chips


def best(fn, rounds: int) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """(items, best wall seconds, CPU seconds of that run) over ``rounds`` runs of ``fn() -> (items, wall)``."""
    out = (0, float("inf"), 0.0)
    for _ in range(rounds):
        c0 = time.process_time()
        n, t = fn()
        c = time.process_time() - c0
        if t < out[1]:
            out = (n, t, c)
    return out


def geoarray_epoch(cube, mode: str) -> tuple[int, float]:
    plan = plan_chips(cube, chip_size=256, mode=mode, n_random=16, val_fraction=0.0)
    n = cube.sizes["band"]
    s = ChipStream(
        cube,
        plan.train,
        plan,
        bands=list(cube.band.values),
        mean=[0.0] * n,
        std=[1.0] * n,
        batch_size=16,
        shuffle=True,
        readers=2,
    )
    t0 = time.perf_counter()
    count = sum(len(b.x) for b in s)
    return count, time.perf_counter() - t0


def xbatcher_epoch(cube, shuffle: bool, limit: int) -> tuple[int, float]:
    import torch
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    da = cube.imagery
    gen = xbatcher.BatchGenerator(da, input_dims={"y": 256, "x": 256})
    ds = MapDataset(gen)
    dl = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=shuffle, num_workers=0)
    t0 = time.perf_counter()
    count = 0
    for b in dl:
        count += len(b)
        if count >= limit:
            break
    return count, time.perf_counter() - t0


def decode_limit(store, patches_per_chunk: int, rounds: int = 3) -> tuple[float, float]:
    z = zarr.open_array(str(store / "imagery"), mode="r")
    t, _, ny, nx = z.shape
    cy, cx = z.chunks[2], z.chunks[3]
    keys = [(ti, y, x) for ti in range(t) for y in range(0, ny, cy) for x in range(0, nx, cx)]

    def read(k):
        ti, y, x = k
        return z[ti, :, y : y + cy, x : x + cx]

    def run() -> tuple[int, float]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(read, keys))
        return len(keys) * patches_per_chunk, time.perf_counter() - t0

    run()  # the first pass also pays for opening files and a cold page cache
    n, t, c = best(run, rounds)
    return n / t, c / n * 1e3


def step_fraction(cube) -> tuple[float, float]:
    import torch

    from geoarray.models import create_model

    torch.set_num_threads(2)
    model = create_model("unet", in_channels=8, num_classes=4, width=8, depth=3)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    plan = plan_chips(cube, chip_size=128, val_fraction=0.0)
    n = cube.sizes["band"]
    s = ChipStream(
        cube,
        plan.train,
        plan,
        bands=list(cube.band.values),
        mean=[3e4] * n,
        std=[1e4] * n,
        batch_size=16,
        labels=None,
        readers=2,
    )

    def step(x):
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()

    for b in s:  # warm-up epoch
        step(b.x)
    steps = 0
    t0 = time.perf_counter()
    for b in s:
        step(b.x)
        steps += 1
    real = time.perf_counter() - t0
    x = torch.randn(16, 8, 128, 128)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    synth = time.perf_counter() - t0
    return real, synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--times", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zeros", action="store_true", help="all-zero imagery (decodes unrealistically fast)")
    ap.add_argument("--no-step", action="store_true", help="skip the UNet training-step part")
    args = ap.parse_args()
    wd = workdir("b2")
    kind = "zeros" if args.zeros else "refl"
    store = make_store(
        wd / f"u16_{args.size}_{kind}.zarr",
        times=args.times,
        size=args.size,
        bands=8,
        dtype="uint16",
        zeros=args.zeros,
    )
    cube = geoarray.open_cube(store)
    print(load_report())
    what = "all zeros" if args.zeros else "values 1000..6000"
    print(f"cube {args.times}x8x{args.size}² uint16 ({what}), 512² chunks; 256² patches, batch 16")
    limit, limit_cpu = decode_limit(store, patches_per_chunk=4, rounds=args.rounds)
    print(f"  zarr decode limit      : {limit:8.1f} patches/s   CPU {limit_cpu:.2f} ms/patch")
    import torch  # noqa: F401  (a training process has torch loaded; don't time its import)

    geoarray_epoch(cube, "grid")  # warm-up: imports, zarr's event loop, page cache, for everyone alike
    xbatcher_epoch(cube, False, limit=16)
    results = {}
    for mode, shuffle in (("grid", False), ("random", True)):
        n, t, c = best(lambda: geoarray_epoch(cube, mode), args.rounds)
        g = n / t
        xn, xt, _ = best(lambda: xbatcher_epoch(cube, shuffle, limit=max(64, n)), max(1, args.rounds - 1))
        x = xn / xt
        results[mode] = (g, x)
        print(
            f"  {mode:6s} geoarray {g:8.1f} patches/s (CPU {c / n * 1e3:.2f} ms/patch)   xbatcher {x:8.1f} patches/s   "
            f"ratio {g / x:5.1f}x (target >= 3)   vs decode limit {g / limit:4.2f} (target >= 0.7)"
        )
    if args.no_step:
        return
    real, synth = step_fraction(cube)
    frac = max(0.0, (real - synth) / real)
    print(
        f"  UNet step: real loader {real:.2f} s, synthetic tensors {synth:.2f} s -> loader-bound {frac:.1%} "
        "(target < 10%)"
    )


if __name__ == "__main__":
    main()
