"""Batch assembly for the chip stream: raw chips normalised straight into reused batch buffers, in threads.

The stream hands over raw chip views (the source dtype, e.g. uint16) and this module writes each one into its
batch slot as float32, normalised in the operation order of :func:`geoarray._preprocess.normalize_fill`, so
training and predict see the same numbers. One pass per chip, no whole-block float copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FILL_THREADS", "Batch"]

FILL_THREADS = 2  # threads that normalise chips into a batch (numpy releases the GIL)


@dataclass
class Batch:
    """A training batch as torch tensors.

    ``x``: ``(B, C, H, W)`` image chips, ``(B, T, C, H, W)`` sequences or ``(B, T, C)`` pixel series;
    ``y``: ``(B, H, W)`` class ids (``-100`` = ignore), ``(B, K, H, W)`` multi-label targets (``-100`` =
    ignore), ``(B, T, H, W)`` per-frame ids, or ``(B,)`` chip / pixel labels; ``dates``: ``(B, T)`` days
    of year (sequences and pixels); ``valid``: ``(B, T)`` bool for pixel series, or the float fraction of valid
    pixels on each date of multi-date chips ``(B, T, C, H, W)``.
    """

    x: Any
    y: Any
    dates: Any = None
    valid: Any = None


class _BatchBuffers:
    """Preallocated numpy arrays for one batch, reused across batches of the same shape."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def _get(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        a = self.arrays.get(key)
        if a is None or a.shape != shape or a.dtype != np.dtype(dtype):
            a = np.empty(shape, dtype=dtype)
            self.arrays[key] = a
        return a

    def fill(
        self,
        picks: list[tuple[Any, ...]],
        stream: Any,
        rng: np.random.Generator,
        pool: ThreadPoolExecutor | None = None,
    ) -> Batch:
        import torch

        n = len(picks)
        x = self._get("x", (n, *picks[0][0].shape), np.float32)
        has_y = picks[0][1] is not None
        y = self._get("y", (n, *np.shape(picks[0][1])), np.int64) if has_y else None
        norm = stream._norm
        aug = (
            _draw_augment(n, x.shape[-3], rng)
            if stream.augment and stream.kind in ("image", "sequence", "chip")
            else None
        )

        def put(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                p = picks[i]
                # the raw chip, normalised straight into its slot; unusable pixels 0 on every band
                norm.into(x[i], p[0], band_axis=-3)
                ok = p[4]
                if ok is not None and not ok.all():
                    np.moveaxis(x[i], -3, -1)[~ok] = 0
                if y is not None:
                    y[i] = p[1]
                if aug is not None:
                    _augment_one(x, y, i, *aug[i])

        # Memory-bound numpy work that releases the GIL: the batch is filled in FILL_THREADS parts at once
        # (zarr decodes the next blocks meanwhile in its own thread).
        if pool is None or n < 2 * FILL_THREADS:
            put(0, n)
        else:
            cuts = np.linspace(0, n, FILL_THREADS + 1).astype(int)
            for f in [pool.submit(put, int(a), int(b)) for a, b in itertools.pairwise(cuts)]:
                f.result()
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(y) if y is not None else None
        dates = valid = None
        if stream.kind == "sequence":
            dates = torch.from_numpy(np.stack([p[2] for p in picks]).astype(np.float32))
        if picks[0][3] is not None:  # multi-date chip fractions (pixel batches come from _PixelPool.draw)
            valid = torch.from_numpy(np.stack([p[3] for p in picks]))
        return Batch(xt, yt, dates, valid)


class _Norm:
    """``(x * scale - mean) / std`` per band written into a float32 array, in the operation order (and so
    the float32 results) of :func:`geoarray._preprocess.normalize_fill`, which predict applies to its blocks."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.inv = np.float32(1.0) / np.asarray(std, dtype=np.float32)
        self.scale = float(scale)

    def into(self, out: np.ndarray, raw: np.ndarray, *, band_axis: int) -> None:
        shape = [1] * (-band_axis)
        shape[0] = -1
        m, inv = self.mean.reshape(shape), self.inv.reshape(shape)
        np.copyto(out, raw, casting="unsafe")  # the cast to float32 happens first, as in normalize_fill
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        out -= m
        out *= inv


def _draw_augment(n: int, bands: int, rng: np.random.Generator) -> list[tuple[Any, ...]]:
    """Per sample: quarter turns, a flip, and per-band gain and bias (drawn in sample order, then applied)."""
    out = []
    for _ in range(n):
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        gain = rng.normal(1.0, 0.05, size=(bands, 1, 1)).astype(np.float32)
        bias = rng.normal(0.0, 0.05, size=(bands, 1, 1)).astype(np.float32)
        out.append((k, flip, gain, bias))
    return out


def _augment_one(
    x: np.ndarray, y: np.ndarray | None, i: int, k: int, flip: bool, gain: np.ndarray, bias: np.ndarray
) -> None:
    """In place, sample ``i``: flips and 90° rotations (image and target alike), radiometric jitter."""
    xi = np.rot90(x[i], k, axes=(-2, -1))
    if flip:
        xi = xi[..., ::-1]
    x[i] = xi * gain + bias
    if y is not None and y.ndim >= 3:
        yi = np.rot90(y[i], k, axes=(-2, -1))
        y[i] = yi[..., ::-1] if flip else yi


class _PixelPool:
    """The pixel stream's shuffle buffer: one row per pixel sample in a few column arrays, drawn a batch at a time.

    Columns: ``x`` ``(N, T, C)`` normalised series, ``valid`` ``(N, T)``, ``dates`` ``(N, T)`` and ``y`` ``(N,)``.
    Live rows are ``[lo, hi)``. A shuffled stream draws each batch uniformly without replacement from all live
    rows (one vectorised draw, in random order) and moves the last rows into the holes; an unshuffled stream
    takes the first rows in order. The columns grow by doubling; one pool serves one epoch.
    """

    def __init__(self) -> None:
        self.cols: dict[str, np.ndarray] = {}
        self.lo = self.hi = 0

    def __len__(self) -> int:
        return self.hi - self.lo

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """Append rows (each column's rows, as :meth:`ChipStream._pixel_rows` makes them)."""
        if self.lo:  # unshuffled: drop the rows already taken
            for a in self.cols.values():
                a[: self.hi - self.lo] = a[self.lo : self.hi]
            self.lo, self.hi = 0, self.hi - self.lo
        k = len(rows["y"])
        need = self.hi + k
        for key, new in rows.items():
            a = self.cols.get(key, new[:0])  # rows of one shape: ChipStream refuses mixed date counts
            if len(a) < need:
                grown: np.ndarray = np.empty((max(need, 2 * len(a)), *new.shape[1:]), new.dtype)
                grown[: self.hi] = a[: self.hi]
                a = grown
            a[self.hi : need] = new
            self.cols[key] = a
        self.hi = need

    def draw(self, n: int, shuffle: bool, rng: np.random.Generator, bufs: _BatchBuffers) -> Batch:
        """The next batch of ``n`` rows, copied into ``bufs`` (then removed from the pool)."""
        import torch

        n = min(n, len(self))
        out = {k: bufs._get(k, (n, *a.shape[1:]), a.dtype) for k, a in self.cols.items()}
        if not shuffle:
            for k, a in self.cols.items():
                out[k][:] = a[self.lo : self.lo + n]
            self.lo += n
        else:
            idx = rng.choice(self.hi, n, replace=False)  # uniform, no replacement, in random order
            for k, a in self.cols.items():
                np.take(a, idx, axis=0, out=out[k])
            # the rows past the new end that were not drawn fill the drawn rows' places before it
            end = self.hi - n
            holes = idx[idx < end]
            keep = np.ones(n, dtype=bool)
            keep[idx[idx >= end] - end] = False
            fill = end + np.flatnonzero(keep)
            for a in self.cols.values():
                a[holes] = a[fill]
            self.hi = end
        return Batch(*(torch.from_numpy(out[k]) for k in ("x", "y", "dates", "valid")))
