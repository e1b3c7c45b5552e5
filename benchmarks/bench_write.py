"""B3: Zarr write of predict outputs vs a raw numcodecs-encode-and-write floor for the same chunks.

The outputs (float32 and float16 features, uint8 masks; 512² chunks) are already in memory, so only writing
is timed. geoarray's path is the one predict uses (`_block_write.write_block`, one chunk per task, 2 dask threads):
a whole chunk of a local array goes through the array's own zarr codecs and `LocalStore.set_sync` in the dask
thread (`geoarray/_chunk_write.py`; zarr's `z[region] = arr` hops to its event-loop thread and to
`asyncio.to_thread` twice per chunk, which cost about as much as encoding a mask chunk). The floor encodes each
chunk with the same codec (numcodecs, same threads) and writes the bytes to a file, with nothing else; "atomic"
is the floor plus the `<chunk>.<uuid>.partial` + rename that zarr's LocalStore (and so predict's resume) needs;
"z[region] = arr" is zarr's own setitem in the same dask tasks (write_block's path before _chunk_write.py).

End to end: the share of writing in ``predict(store=)`` (the B1 model, a UNet of depth 3 and width 8, on a
2 x 4 x 2048² cube; outputs probabilities float32 + mask uint8): predict's wall time beside the time of writing
the same outputs, with the codecs predict gave them, through the same writer.

    .venv/bin/python benchmarks/bench_write.py [--size 2048] [--no-e2e]
"""

from __future__ import annotations

import argparse
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.threaded
import numcodecs
import numpy as np
import zarr
from _common import load_report, workdir

from geoarray import _block_write


def arrays(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    smooth = rng.random((4, 8, size, size), dtype=np.float32)
    return {
        "features float32": smooth,
        "features float16": smooth.astype(np.float16),
        "mask uint8": (rng.random((4, size, size)) * 5).astype(np.uint8),
    }


def chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    grids = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    import itertools

    return [
        tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape, strict=True))
        for starts in itertools.product(*grids)
    ]


def split(data: np.ndarray, chunks: tuple[int, ...]) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The chunks as contiguous arrays: what predict's block kernel hands to the writer."""
    return [(s, np.ascontiguousarray(data[s])) for s in chunk_slices(data.shape, chunks)]


def zarr_setitem(results: tuple[np.ndarray, ...], targets: list) -> int:  # type: ignore[type-arg]
    """What write_block did before geoarray/_chunk_write.py: ``z[region] = arr`` (for comparison only)."""
    for arr, (path, _, region) in zip(results, targets, strict=True):
        z = _OPEN.get(path)
        if z is None:
            z = _OPEN[path] = zarr.open_array(path, mode="r+").with_config({"write_empty_chunks": True})
        z[region] = arr
    return 1


_OPEN: dict[str, zarr.Array] = {}  # type: ignore[type-arg]


def geoarray_write(
    data: np.ndarray,
    parts: list,  # type: ignore[type-arg]
    path: Path,
    chunks: tuple[int, ...],
    compressor: object,
    task: object = _block_write.write_block,
) -> float:
    """Seconds to write ``parts`` the way predict does (creating the empty array is not timed)."""
    if path.exists():
        shutil.rmtree(path)
    zarr.create_array(
        str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=[compressor], zarr_format=3
    )
    token = str(path.stat().st_mtime_ns)
    # the task predict runs after each block, in dask's threaded scheduler (outputs already in memory)
    dsk = {("w", i): (task, (arr,), [(str(path), token, s)]) for i, (s, arr) in enumerate(parts)}
    _OPEN.clear()
    t0 = time.perf_counter()  # from here as in a predict run: the first task of each array opens it
    dask.threaded.get(dsk, list(dsk), num_workers=2)
    return time.perf_counter() - t0


def floor_write(parts: list, path: Path, codec: numcodecs.abc.Codec) -> float:  # type: ignore[type-arg]
    """Seconds to encode ``parts`` and write each to a file, 2 threads (the empty folder is not timed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

    def one(i: int) -> None:
        (path / str(i)).write_bytes(codec.encode(parts[i][1]))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(len(parts))))
    return time.perf_counter() - t0


def floor_atomic_write(parts: list, path: Path, codec: numcodecs.abc.Codec) -> float:  # type: ignore[type-arg]
    """The floor, written the way zarr's LocalStore writes a chunk: a temporary file, then a rename."""
    import uuid

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

    def one(i: int) -> None:
        tmp = path / f"{i}.{uuid.uuid4().hex}.partial"
        tmp.write_bytes(codec.encode(parts[i][1]))
        tmp.replace(path / str(i))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(len(parts))))
    return time.perf_counter() - t0


def end_to_end(size: int, wd: Path) -> None:
    from _common import make_ckpt, make_store

    import geoarray

    store = make_store(wd / f"e2e{size}.zarr", times=2, size=size)
    ckpt = make_ckpt(wd / "unet.safetensors", "unet", 4, num_classes=4, depth=3, width=8)
    names = ("probabilities", "mask")
    with dask.config.set(scheduler="threads", num_workers=2):
        warm = geoarray.open_cube(store).isel(y=slice(0, 512), x=slice(0, 512))
        geoarray.predict(warm, ckpt)["mask"].load()  # loads torch and the model outside the timing
        best = float("inf")
        for _ in range(2):
            for n in names:
                if (store / n).exists():
                    shutil.rmtree(store / n)
            t0 = time.perf_counter()
            geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
            best = min(best, time.perf_counter() - t0)
    t_write = 0.0
    for n in names:
        z = zarr.open_array(str(store / n), mode="r")
        data = z[...]
        parts = split(data, z.chunks)
        t_write += min(
            geoarray_write(data, parts, wd / "e2e-w.zarr", z.chunks, z.compressors[0]) for _ in range(2)
        )
    px = 2 * size * size
    print(
        f"  end to end: predict(store=) {best:.2f} s ({px / best / 1e6:.2f} Mpx/s); writing its outputs alone "
        f"{t_write:.2f} s = {t_write / best:.1%} of predict (codec {z.compressors[0]})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    wd = workdir("b3")
    print(load_report())
    codecs = {
        "zstd(3)": (zarr.codecs.ZstdCodec(level=3), numcodecs.Zstd(level=3)),
        "blosc lz4+shuffle": (
            zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
        ),
    }
    for name, data in arrays(args.size).items():
        chunks = (1, data.shape[1], 512, 512) if data.ndim == 4 else (1, 512, 512)
        parts = split(data, chunks)
        mb = data.nbytes / 1e6
        for cname, (zc, nc) in codecs.items():
            writers = {
                "g": lambda: geoarray_write(data, parts, wd / "g.zarr", chunks, zc),
                "f": lambda: floor_write(parts, wd / "floor", nc),
                "fa": lambda: floor_atomic_write(parts, wd / "floor-a", nc),
                "zs": lambda: geoarray_write(data, parts, wd / "zs.zarr", chunks, zc, task=zarr_setitem),
            }
            best = dict.fromkeys(writers, float("inf"))
            # interleaved, in a rotating order (the page cache's writeback of one writer's files slows the next);
            # small arrays (masks) get more rounds
            for r in range(args.rounds * (3 if data.nbytes < 64e6 else 1)):
                order = list(writers)[r % 4 :] + list(writers)[: r % 4]
                for k in order:
                    best[k] = min(best[k], writers[k]())
            g, f, fa, zs = best["g"], best["f"], best["fa"], best["zs"]
            print(
                f"  {name:17s} {cname:18s}: geoarray {mb / g:7.0f} MB/s  floor {mb / f:7.0f} MB/s  "
                f"ratio {f / g:.2f} (target >= 0.8)  [atomic floor {mb / fa:5.0f} MB/s, ratio {fa / g:.2f}; "
                f"zarr's z[region] = arr {mb / zs:5.0f} MB/s, ratio {f / zs:.2f}]"
            )
    if not args.no_e2e:
        end_to_end(args.size, wd)


if __name__ == "__main__":
    main()
