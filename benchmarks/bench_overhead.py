"""B5: per-chunk overhead of predict with a trivial model (a 1x1 linear map) over 1k to 16k chunks.

Chunks are 16 x 16 px, so the model's own work is negligible: the time per chunk is what geoarray, dask and
the storage cost around it. Two cubes per count:

- in memory, a dask array chunked 16 x 16: predict's own overhead (graph, scheduling, the block kernel),
  beside what dask alone takes to sum the same input chunks;
- a Zarr store with 16 x 16 chunks (one file each): the same plus reading, shown beside the floor of reading
  the same chunks with zarr alone (same windows, same 2 threads). Overhead = (predict - floor) / chunks.

Nothing is written. ``.venv/bin/python benchmarks/bench_overhead.py [--counts 1024,4096,16384]``
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import dask
from _common import load_report, make_ckpt, make_store, workdir

import geoarray
from geoarray import _source
from geoarray._blocks import MIN_BLOCK


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def zarr_floor(store: str, side: int) -> float:
    """Read every chunk with zarr, in the MIN_BLOCK windows predict reads, on 2 threads."""
    wins = [(y, x) for y in range(0, side, MIN_BLOCK) for x in range(0, side, MIN_BLOCK)]

    def one(w: tuple[int, int]) -> None:
        y, x = w
        _source.read(
            store, "imagery", (slice(0, 1), slice(None), slice(y, y + MIN_BLOCK), slice(x, x + MIN_BLOCK))
        )

    with ThreadPoolExecutor(2) as pool:
        return timed(lambda: list(pool.map(one, wins)))


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
            mem = geoarray.open_cube(store).load().chunk({"y": args.chunk, "x": args.chunk})
            run = lambda c: geoarray.predict(c, ckpt, outputs=["mask"])["mask"].data.sum().compute()  # noqa: E731
            run(mem.isel(y=slice(0, 64), x=slice(0, 64)))  # load the model once, outside the timings
            t_mem = min(timed(lambda: run(mem)) for _ in range(2))
            t_dask = min(timed(lambda: mem.imagery.data.sum().compute()) for _ in range(2))
            t_store = min(timed(lambda: run(geoarray.open_cube(store))) for _ in range(2))
            t_floor = min(zarr_floor(str(store), side) for _ in range(2))
        us = 1e6 / n
        rows.append((n, t_mem, t_store - t_floor, t_dask))
        print(
            f"  {n:6d} chunks of {args.chunk}²: in memory {t_mem * us:5.0f} µs/chunk (dask sum of the input alone "
            f"{t_dask * us:4.0f}) | store {t_store * us:5.0f} µs/chunk, "
            f"zarr read floor {t_floor * us:5.0f}, overhead {(t_store - t_floor) * us:5.0f} µs/chunk"
        )
    (n0, m0, s0, _), (n1, m1, s1, d1) = rows[0], rows[-1]
    print(
        f"B5 per-chunk overhead at {n1} chunks: in memory {m1 / n1 * 1e6:.0f} µs (dask alone {d1 / n1 * 1e6:.0f} µs), "
        f"over the zarr read floor "
        f"{s1 / n1 * 1e6:.0f} µs (target <= 100); growth {m1 / m0:.1f}x / {s1 / s0:.1f}x for {n1 / n0:.0f}x chunks"
    )


if __name__ == "__main__":
    main()
