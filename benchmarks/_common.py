"""Shared set-up for the benchmarks: real Zarr cubes on disk, real checkpoints, a load report."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr


def workdir(name: str) -> Path:
    root = Path(os.environ.get("GEOARRAY_BENCH_DIR", tempfile.gettempdir())) / f"geoarray-bench-{name}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_report() -> str:
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} cores, load average {one:.2f} (1 min) {five:.2f} (5 min)"


def make_store(
    path: Path,
    *,
    times: int,
    size: int,
    bands: int = 4,
    chunk: int = 512,
    dtype: str = "float32",
    zeros: bool = False,
) -> Path:
    """A cube of random imagery written to Zarr (built chunk by chunk; never all in memory); ``zeros``: all 0."""
    import geoarray

    if path.exists():
        try:
            ds = geoarray.open_cube(path)
            if ds.imagery.shape == (times, bands, size, size) and ds.attrs.get("bench_zeros", False) == zeros:
                return path
        except Exception:
            pass
        shutil.rmtree(path)

    # integer cubes hold reflectance-like values 1000..6000 (a cast of 0.1..0.6 would make every pixel 0)
    gain = 10_000.0 if np.dtype(dtype).kind in "iu" else 1.0

    def block(b: np.ndarray, block_info: Any = None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        rng = np.random.default_rng(loc[0][0] * 1000 + loc[2][0] + 7 * loc[3][0])
        return ((rng.random(b.shape, dtype=np.float32) * 0.5 + 0.1) * gain).astype(dtype)

    img = dsa.zeros((times, bands, size, size), chunks=(1, bands, chunk, chunk), dtype=dtype)
    if not zeros:
        img = img.map_blocks(block, dtype=dtype)
    ds = xr.Dataset(
        {"imagery": (("time", "band", "y", "x"), img)},
        coords={
            "time": pd.date_range("2022-01-01", periods=times, freq="30D"),
            "band": np.array([f"B{i + 1}" for i in range(bands)], dtype=object),
            "y": 5_000_000.0 - 10.0 * (np.arange(size) + 0.5),
            "x": 500_000.0 + 10.0 * (np.arange(size) + 0.5),
        },
    ).rio.write_crs("EPSG:32633")
    ds.attrs["bench_zeros"] = zeros
    geoarray.write_cube(ds, path, chunk=chunk)
    return path


def make_ckpt(path: Path, name: str, bands: int, **hparams: Any) -> Path:
    import torch

    import geoarray
    from geoarray.models import create_model

    torch.manual_seed(0)
    model = create_model(name, in_channels=bands, **hparams)
    return geoarray.save_checkpoint(
        path,
        model,
        task="segmentation",
        bands=[f"B{i + 1}" for i in range(bands)],
        mean=[0.35] * bands,
        std=[0.15] * bands,
    )


def best_of(fn: Callable[[], Any], repeat: int = 2) -> float:
    """Best wall time of ``repeat`` runs (seconds)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
