"""Planet scale: predict's graph for a 200,000² x 12-band cube, and per-chunk cost on a LocalCluster.

1. Graph build. A lazy cube of 200,000 x 200,000 px x 12 bands (one date, float32, 512² chunks: 152,881
   chunks, 1.9 TB if it were read) with real coordinates and CRS. ``geoarray.predict(cube, ckpt)`` builds the
   whole graph without touching a pixel; timed, with this process's peak RSS (goal: < 30 s, < 2 GB). torch is
   imported and the model loaded by a warm-up predict on a small cube first, so neither is in the figures.
2. Per-chunk overhead. ``predict`` of a trivial model (``linear``, a 1x1 map: its own work is negligible) on a
   LocalCluster of worker processes, over cubes of 1k, 10k and 50k small chunks, reduced on the workers
   (``mask.sum()``) so nothing large travels back. The time per chunk should stay flat as the count grows;
   beside it, dask alone summing the same input chunks on the same cluster (the scheduler's own floor).
3. Host work per real chunk: ``predict(store=)`` of a Zarr cube in 512² x 12-band uint16 chunks (values
   1000..6000) with the ``linear`` model, one thread: the CPU time, bytes read and bytes written per chunk.
   This is what a GPU worker's CPU does around the model (read, decode, normalise, softmax, encode, write); the
   README's costing of a 16-GPU run is built from these figures.

    .venv/bin/python benchmarks/bench_scale.py [--side 200000] [--counts 1000,10000,50000] [--chunk 32]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr
from _common import load_report, make_ckpt, workdir

import geoarray


def lazy_cube(side: int, chunk: int, bands: int = 12, times: int = 1) -> xr.Dataset:
    """A cube of zeros that exists only as a graph: UTM 33N, 10 m pixels, pixel-centre coordinates."""
    img = dsa.zeros((times, bands, side, side), chunks=(1, bands, chunk, chunk), dtype="float32")
    return xr.Dataset(
        {"imagery": (("time", "band", "y", "x"), img)},
        coords={
            "time": pd.date_range("2024-05-01", periods=times, freq="30D"),
            "band": np.array([f"B{i + 1}" for i in range(bands)], dtype=object),
            "y": 9_000_000.0 - 10.0 * (np.arange(side) + 0.5),
            "x": -1_000_000.0 + 10.0 * (np.arange(side) + 0.5),
        },
    ).rio.write_crs("EPSG:32633")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def graph_build(side: int, ckpt: Path) -> None:
    geoarray.predict(lazy_cube(1024, 512), ckpt, device="cpu")  # warm-up: torch, the checkpoint, dask
    before = rss_mb()
    t0 = time.perf_counter()
    cube = lazy_cube(side, 512)
    t1 = time.perf_counter()
    out = geoarray.predict(cube, ckpt, device="cpu")
    t2 = time.perf_counter()
    after = rss_mb()
    chunks = cube.imagery.data.npartitions
    layers = out["probabilities"].data.dask
    tasks = sum(len(layer) for name, layer in layers.layers.items() if "geoarray" in name)
    print(
        f"graph build: {side:,}² x 12 bands in 512² chunks = {chunks:,} chunks "
        f"({cube.imagery.nbytes / 1e12:.1f} TB as float32)"
    )
    print(f"  lazy cube {t1 - t0:6.2f} s; predict (graph) {t2 - t1:6.2f} s (goal < 30 s); {tasks:,} geoarray tasks")
    print(
        f"  peak RSS {after:7.0f} MB (goal < 2048 MB); before the build {before:.0f} MB (python, torch, model), "
        f"so the graph took at most {after - before:.0f} MB, {(after - before) * 1e6 / chunks:.0f} B per chunk"
    )


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def overhead(counts: list[int], chunk: int, ckpt: Path, workers: int) -> None:
    from distributed import Client, LocalCluster

    print(
        f"per-chunk cost on a LocalCluster ({workers} worker processes x 1 thread, the scheduler in this process), "
        f"chunks of {chunk}² x 12 bands; wall time, and CPU time (robust to a loaded machine) of the scheduler + "
        "client and of the workers"
    )
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as lc,
        Client(lc) as client,
    ):

        def measure(fn) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
            c0, w0, t0 = _cpu_seconds(), sum(client.run(_cpu_seconds).values()), time.perf_counter()
            fn()
            t1 = time.perf_counter()
            return t1 - t0, _cpu_seconds() - c0, sum(client.run(_cpu_seconds).values()) - w0

        geoarray.predict(lazy_cube(4 * chunk, chunk), ckpt, device="cpu")["mask"].data.sum().compute()  # warm
        rows = []
        for n in counts:
            side = round(n**0.5) * chunk
            cube = lazy_cube(side, chunk)
            real = cube.imagery.data.npartitions
            t0 = time.perf_counter()
            out = geoarray.predict(cube, ckpt, device="cpu", outputs=["mask"])
            build = time.perf_counter() - t0
            run = measure(lambda: client.compute(out["mask"].data.sum()).result())
            floor = measure(lambda: client.compute(cube.imagery.data.sum()).result())
            rows.append((real, build, run, floor))
            us = 1e6 / real
            print(
                f"  {real:7,d} chunks: graph {build * us:5.0f} µs/chunk | predict {run[0] * us:6.0f} µs/chunk wall "
                f"({run[0]:6.1f} s), CPU scheduler+client {run[1] * us:5.0f} µs, workers {run[2] * us:5.0f} µs | "
                f"dask alone summing the input {floor[0] * us:5.0f} µs wall, CPU {floor[1] * us:4.0f} + {floor[2] * us:4.0f} µs"
            )
        n0, b0, r0, _ = rows[0]
        for n1, b1, r1, _ in rows[1:]:
            grow = [(r1[i] / n1) / (r0[i] / n0) for i in range(3)]
            print(
                f"  {n1:,} vs {n0:,} chunks, per chunk: wall x{grow[0]:.2f}, scheduler CPU x{grow[1]:.2f}, "
                f"worker CPU x{grow[2]:.2f}, graph x{(b1 / n1) / (b0 / n0):.2f} (goal: flat, ~1)"
            )


def host_work(wd: Path, side: int = 2048) -> None:
    import shutil

    import dask
    import torch
    from _common import make_store

    from geoarray.models import create_model

    torch.manual_seed(0)
    ckpt = geoarray.save_checkpoint(  # the statistics of the store's values (uniform 1000..6000)
        wd / "linear12-u16.safetensors",
        create_model("linear", in_channels=12, num_classes=4),
        task="segmentation",
        bands=[f"B{i + 1}" for i in range(12)],
        mean=[3500.0] * 12,
        std=[1443.0] * 12,
    )
    store = make_store(wd / f"host{side}.zarr", times=1, size=side, bands=12, dtype="uint16")
    for n in ("probabilities", "mask"):
        shutil.rmtree(store / n, ignore_errors=True)
    chunks = (side // 512) ** 2
    read = sum(f.stat().st_size for f in (store / "imagery" / "c").rglob("*") if f.is_file())
    with dask.config.set(scheduler="synchronous"):
        geoarray.predict(geoarray.open_cube(store).isel(x=slice(0, 512), y=slice(0, 512)), ckpt)["mask"].load()
        before = rss_mb()
        c0, t0 = time.process_time(), time.perf_counter()
        geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    written = sum(f.stat().st_size for n in ("probabilities", "mask") for f in (store / n).rglob("*") if f.is_file())
    print(
        f"host work per 512² x 12-band uint16 chunk (linear model, 4 classes, one thread, {chunks} chunks): "
        f"CPU {cpu / chunks * 1e3:.1f} ms (wall {wall / chunks * 1e3:.1f} ms); read {read / chunks / 1e6:.2f} MB "
        f"(zstd; {512 * 512 * 12 * 2 / 1e6:.2f} MB raw), written {written / chunks / 1e6:.2f} MB "
        f"(probabilities float32 + mask uint8); peak RSS grew {rss_mb() - before:.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=200_000)
    ap.add_argument("--counts", default="1000,10000,50000")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-host", action="store_true")
    args = ap.parse_args()
    wd = workdir("scale")
    ckpt = make_ckpt(wd / "linear12.safetensors", "linear", 12, num_classes=4)
    print(load_report())
    if not args.skip_build:
        graph_build(args.side, ckpt)
    if not args.skip_host:
        host_work(wd)
    counts = [int(v) for v in args.counts.split(",") if v]
    if counts:
        overhead(counts, args.chunk, ckpt, args.workers)


if __name__ == "__main__":
    main()
