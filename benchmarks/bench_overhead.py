"""B5: per-chunk overhead of predict with a trivial model (a 1x1 linear map) over 1k to 16k chunks.

Chunks are 16 x 16 px, so the model's own work is negligible: time per chunk is geoarray + dask + zarr
overhead (reading the imagery chunk and computing the outputs; nothing is written).

    .venv/bin/python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import argparse
import time

import dask
from _common import load_report, make_ckpt, make_store, workdir

import geoarray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--counts", default="1024,4096,16384")
    args = ap.parse_args()
    wd = workdir("b5")
    ckpt = make_ckpt(wd / "linear.safetensors", "linear", 4, num_classes=2)
    print(load_report())
    rows = []
    for n in (int(v) for v in args.counts.split(",")):
        side = round(n**0.5) * args.chunk
        store = make_store(wd / f"c{n}.zarr", times=1, size=side, chunk=args.chunk)
        with dask.config.set(scheduler="threads", num_workers=2):
            cube = geoarray.open_cube(store)
            t0 = time.perf_counter()
            out = geoarray.predict(cube, ckpt, outputs=["mask"])
            graph = time.perf_counter() - t0
            out["mask"].data.sum().compute()
            total = time.perf_counter() - t0
        rows.append((n, total))
        print(
            f"  {n:6d} chunks of {args.chunk}²: {total:6.2f} s (graph {graph:.2f} s)  {total / n * 1e6:6.0f} µs/chunk"
        )
    (n0, t0_), (n1, t1) = rows[0], rows[-1]
    print(
        f"B5 per-chunk overhead at {n1} chunks: {t1 / n1 * 1e6:.0f} µs (target <= 100); "
        f"growth {t1 / t0_:.1f}x for {n1 / n0:.0f}x chunks (linear = {n1 / n0:.0f}x)"
    )


if __name__ == "__main__":
    main()
