"""The batch stream: read blocks in background threads, cut chips, shuffle, augment, hand torch batches over.

Each read block is read once per epoch (one zarr read on the direct path) and cut into every chip it holds.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import xarray as xr

from geoarray._constants import IGNORE
from geoarray._preprocess import date_features
from geoarray.chips._batch import FILL_THREADS, Batch, _BatchBuffers, _Norm, _PixelPool
from geoarray.chips.filters import label_nodata
from geoarray.chips.plan import ChipPlan, Rect, Window, _take_times
from geoarray.errors import TrainError

__all__ = ["Batch", "ChipStream"]


class ChipStream:
    """Iterate batches over windows, reading each read block once per epoch.

    Blocks are read by ``readers`` background threads (each with dask's synchronous scheduler: no nested
    pools, no fork), normalised once, and cut into chips that go through a shuffle buffer spanning several
    blocks. Batches reuse two preallocated buffers, so a batch is valid until the next-but-one is drawn.

    Parameters
    ----------
    cube, windows
        The cube and the windows to stream (``plan.train`` or ``plan.val``).
    plan
        The plan the windows come from (for the read blocks).
    bands, mean, std, scale
        Input bands (in model order) and their normalisation.
    kind
        ``"image"``, ``"sequence"``, ``"pixels"`` or ``"chip"`` (chip-level labels).
    labels
        Name of the label variable (None for unlabelled streams).
    date_encoding
        How dates reach sequence and pixel models (``"doy"``, the default, or ``"days"``): the same function
        predict uses, :func:`geoarray._preprocess.date_features`.
    min_batch
        The smallest batch handed over (at most ``batch_size``). A last batch smaller than it is merged into
        the one before (which grows past ``batch_size``), or dropped when there is none. The training stream
        uses 2: BatchNorm in training mode fails on a batch of one chip whose features are 1x1 (or on one
        pixel series). ``len()`` counts the batches actually yielded.
    """

    def __init__(
        self,
        cube: xr.Dataset,
        windows: Sequence[Window],
        plan: ChipPlan,
        *,
        bands: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 1.0,
        batch_size: int = 16,
        kind: Literal["image", "sequence", "pixels", "chip"] = "image",
        labels: str | None = "labels",
        shuffle: bool = True,
        augment: bool = False,
        seed: int = 0,
        readers: int = 2,
        shuffle_blocks: int = 4,
        drop_last: bool = False,
        pixels_per_window: int = 256,
        var: str = "imagery",
        date_encoding: str | None = None,
        min_batch: int = 1,
    ) -> None:
        self.cube = cube
        self.windows = list(windows)
        self.plan = plan
        self.bands = list(bands)
        self.mean, self.std, self.scale = list(mean), list(std), float(scale)
        self.batch_size, self.kind, self.labels = int(batch_size), kind, labels
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.readers, self.shuffle_blocks, self.drop_last = max(1, readers), max(1, shuffle_blocks), drop_last
        self.pixels_per_window = pixels_per_window
        self.min_batch = max(1, min(int(min_batch), self.batch_size))
        self.var = var
        self.epoch = 0
        self.reads = 0  # block reads, for read-amplification checks
        self._lock = threading.Lock()
        lab = cube[labels] if labels and labels in cube.data_vars else None
        self._lab_dims = tuple(map(str, lab.dims)) if lab is not None else ()
        self._nodata = label_nodata(lab) if lab is not None else -1
        self.multilabel = "class" in self._lab_dims
        present = [str(b) for b in cube["band"].values]
        self._band_idx = [present.index(b) for b in self.bands]
        self._doy = date_features(cube["time"].values, date_encoding)
        by_block: dict[int, list[Window]] = defaultdict(list)
        for w in self.windows:
            by_block[w.block].append(w)
        self._by_block = dict(by_block)
        # what each block's read covers: the block, plus the neighbour strips its random windows reach into
        self._extent = {bi: plan.extent(bi, ws) for bi, ws in self._by_block.items()}
        self._norm = _Norm(self.mean, self.std, self.scale)
        lengths = sorted({len(w.t) for w in self.windows})
        if kind == "pixels" and len(lengths) > 1:
            raise TrainError(
                f"pixel windows with {lengths} dates in one stream; a pixel batch stacks series of one "
                "length. Plan the windows with one set of dates (times='all', as fit does)."
            )

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        if self.drop_last or rest == 0:
            return full
        return full + (
            rest >= self.min_batch
        )  # a rest under min_batch joins the last full batch (or is dropped)

    @property
    def num_samples(self) -> int:
        if self.kind == "pixels":
            return len(self.windows) * self.pixels_per_window
        return len(self.windows)

    # -- reading -------------------------------------------------------------------------------------
    def _read(self, bi: int) -> dict[str, Any]:
        import dask

        from geoarray._source import read, source_of

        b = self._extent[bi]
        sl: dict[str, Any] = {"y": slice(b.y0, b.y1), "x": slice(b.x0, b.x1)}
        times = sorted({t for w in self._by_block[bi] for t in w.t})
        vals: dict[str, Any] = {}
        lazy: dict[str, Any] = {}
        img = self.cube[self.var]
        src = source_of(img)
        if src is not None:  # straight from the store: one zarr read, no dask graph
            vals["img"] = read(*src, (times, self._band_idx, sl["y"], sl["x"]))
        else:
            lazy["img"] = img.sel(band=self.bands).isel(time=times, **sl).data
        if "valid" in self.cube.data_vars:
            v = self.cube["valid"]
            vsrc = source_of(v)
            if vsrc is not None:
                vals["valid"] = read(*vsrc, (times, sl["y"], sl["x"]))
            else:
                lazy["valid"] = v.isel(time=times, **sl).data
        if self._lab_dims:
            lab = self.cube[self.labels]
            lsrc = source_of(lab)
            idx = tuple(times if d == "time" else sl.get(d, slice(None)) for d in self._lab_dims)
            if lsrc is not None:
                vals["labels"] = read(*lsrc, idx)
            else:
                lazy["labels"] = lab.isel(dict(zip(self._lab_dims, idx, strict=True))).data
        if lazy:
            # the scheduler goes to this call only: dask.config.set in a thread would change the caller's
            # global default (dask's config is process-wide)
            (computed,) = dask.compute(lazy, scheduler="synchronous")
            vals.update(computed)
        with self._lock:
            self.reads += 1
        raw = np.asarray(vals["img"])
        # Chips are normalised straight into the batch (one pass per chip, in _BatchBuffers.fill); here only
        # which pixels are usable: finite (floats) and valid. None: all of them (integer imagery, no `valid`).
        ok: np.ndarray | None = None
        if raw.dtype.kind not in "iub":
            ok = np.isfinite(raw).all(axis=1)
        if vals.get("valid") is not None:
            vb = np.asarray(vals["valid"]).astype(bool, copy=False)
            ok = vb if ok is None else ok & vb
        return {"x": raw, "ok": ok, "labels": vals.get("labels"), "times": times, "rect": b}

    def _target(self, block: dict[str, Any], w: Window, ys: slice, xs: slice) -> np.ndarray:
        tpos = [block["times"].index(t) for t in w.t]
        lab = block["labels"]
        if "time" in self._lab_dims:
            lt = _take_times(lab[..., ys, xs], tpos)
        else:
            lt = np.broadcast_to(lab[..., ys, xs], (len(tpos), *lab[..., ys, xs].shape))
        lt = lt.astype(np.int64)
        bad = lt == self._nodata
        if block["ok"] is not None:
            ok = _take_times(block["ok"][:, ys, xs], tpos)
            bad |= ~ok[:, None] if self.multilabel else ~ok  # (T, K, h, w) for multi-label targets
        return np.where(bad, IGNORE, lt)

    def _samples(self, block: dict[str, Any], rng: np.random.Generator) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        b: Rect = block["rect"]
        for w in self._by_block[block["bi"]]:
            ys, xs = slice(w.y - b.y0, w.y - b.y0 + w.size), slice(w.x - b.x0, w.x - b.x0 + w.size)
            tpos = [block["times"].index(t) for t in w.t]
            x = _take_times(block["x"][:, :, ys, xs], tpos)  # (T, C, h, w): a raw view into the block
            ok = None if block["ok"] is None else _take_times(block["ok"][:, ys, xs], tpos)  # (T, h, w)
            doy = self._doy[list(w.t)]
            one = self.kind == "image" or (self.kind == "chip" and len(tpos) == 1)
            xi, oki = (x[0], None if ok is None else ok[0]) if one else (x, ok)
            if self.kind == "chip":
                label = np.int64(w.label if w.label is not None else IGNORE)
                # a multi-date chip carries the valid fraction of each date (temporal positives pick by it)
                frac = None
                if not one:
                    frac = (
                        np.ones(len(tpos), np.float32)
                        if ok is None
                        else ok.mean(axis=(1, 2), dtype=np.float32)
                    )
                out.append((xi, label, doy, frac, oki))
                continue
            y = self._target(block, w, ys, xs) if self._lab_dims else None
            if self.kind == "image":
                out.append((xi, None if y is None else y[0], doy, None, oki))
            else:
                out.append((xi, y, doy, None, oki))
        return out

    def _read_pixels(self, bi: int, epoch: int) -> dict[str, np.ndarray]:
        """Read block ``bi`` and sample its windows' pixels, in the reader thread (the block is still in cache,
        and the step's thread only appends and draws). The draw within the windows is seeded by
        ``(seed, epoch, bi)``: the same under a seed whatever order the reader threads finish in."""
        block = self._read(bi)
        block["bi"] = bi
        return self._pixel_rows(block, np.random.default_rng((self.seed, epoch, bi)))

    def _pixel_rows(self, block: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Every window of the block: up to ``pixels_per_window`` of its usable pixels (valid on some date, and
        labelled when the stream has labels), uniform without replacement, as rows of whole arrays: ``x``
        ``(N, T, C)`` normalised series (0 on unusable dates), ``valid`` ``(N, T)``, ``dates`` ``(N, T)``
        and ``y`` ``(N,)`` (``IGNORE`` without labels).

        A window's pixels are gathered in block order (cache friendly; the pool draws batches at random) and
        normalised with the band on the outer axis, so every numpy loop runs along the pixels."""
        b: Rect = block["rect"]
        lab = block["labels"]
        raw = np.ascontiguousarray(block["x"])  # (Tb, C, H, W)
        tb, c, _, width = raw.shape
        rows = raw.reshape(tb, c, -1)  # one row of pixels per date and band
        ok_rows = None if block["ok"] is None else block["ok"].reshape(tb, -1)
        picks = []
        for w in self._by_block[block["bi"]]:
            ys, xs = slice(w.y - b.y0, w.y - b.y0 + w.size), slice(w.x - b.x0, w.x - b.x0 + w.size)
            tpos = [block["times"].index(t) for t in w.t]
            lt = lab[..., ys, xs] if lab is not None else None
            if lt is not None and lt.ndim == 3:  # labels(time, y, x): a series takes the last date's label
                lt = lt[tpos[-1]]
            usable = np.ones((ys.stop - ys.start, xs.stop - xs.start), dtype=bool)
            if block["ok"] is not None:  # valid (and finite) on some date
                usable &= _take_times(block["ok"][:, ys, xs], tpos).any(0)
            if lt is not None:
                usable &= lt != self._nodata
            idx = np.flatnonzero(usable.ravel())
            if idx.size > self.pixels_per_window:
                idx = np.sort(rng.choice(idx, self.pixels_per_window, replace=False))
            iy, ix = np.divmod(idx, usable.shape[1])
            picks.append((w, tpos, iy, ix, lt, (iy + ys.start) * width + (ix + xs.start)))
        t = len(picks[0][1]) if picks else 0  # one date count in a pixel stream (checked in __init__)
        total = sum(len(p[2]) for p in picks)
        out = {
            "x": np.empty((total, t, c), np.float32),
            "valid": np.ones((total, t), bool),
            "dates": np.empty((total, t), np.float32),
            "y": np.empty(total, np.int64),
        }
        at = 0
        for w, tpos, iy, ix, lt, flat in picks:
            n = len(flat)
            sl = slice(at, at + n)
            at += n
            series = np.empty((t, c, n), dtype=np.float32)
            self._norm.into(series, _take_times(np.take(rows, flat, axis=2), tpos), band_axis=-2)
            if ok_rows is not None:
                valid = _take_times(np.take(ok_rows, flat, axis=1), tpos)  # (T, n)
                np.copyto(series, 0, where=~valid[:, None, :])  # unusable dates are 0 on every band
                out["valid"][sl] = valid.T
            out["x"][sl] = series.transpose(2, 0, 1)
            out["dates"][sl] = self._doy[list(w.t)]
            out["y"][sl] = IGNORE if lt is None else lt[iy, ix]
        return out

    # -- iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        rng = np.random.default_rng((self.seed, epoch))
        self.epoch += 1
        order = list(self._by_block)
        if self.shuffle:
            rng.shuffle(order)
        # pixel samples live as rows of whole arrays (drawn a batch at a time), chips as a list of views
        pixels = self.kind == "pixels"
        buf: list[tuple[Any, ...]] | _PixelPool = _PixelPool() if pixels else []
        cap = self.shuffle_blocks * max(1, self.num_samples // max(1, len(order))) if self.shuffle else 0
        if self.min_batch > 1:  # keep enough back that the last batch can take a small rest
            cap = max(cap, self.min_batch)
        ring = [_BatchBuffers(), _BatchBuffers()]
        k = 0
        with (
            ThreadPoolExecutor(self.readers, thread_name_prefix="geoarray-chips") as pool,
            ThreadPoolExecutor(FILL_THREADS, thread_name_prefix="geoarray-fill") as fill_pool,
        ):
            # bounded prefetch: keep `readers + 1` block reads in flight
            def read(bi: int) -> Any:  # pixel streams sample their rows in the reader thread too
                return pool.submit(self._read_pixels, bi, epoch) if pixels else pool.submit(self._read, bi)

            futures = [read(bi) for bi in order[: self.readers + 1]]
            nxt = len(futures)
            for i in range(len(order)):
                block: dict[str, Any] = futures[i].result()
                futures[i] = None
                if nxt < len(order):
                    futures.append(read(order[nxt]))
                    nxt += 1
                if isinstance(buf, _PixelPool):
                    buf.add(block)  # the block's pixel rows, sampled in the reader thread
                else:
                    block["bi"] = order[i]
                    buf.extend(self._samples(block, rng))
                while len(buf) >= self.batch_size + cap:
                    yield self._emit(buf, rng, ring[k % 2], pool=fill_pool)
                    k += 1
        if self.shuffle and isinstance(buf, list):
            rng.shuffle(buf)
        while len(buf) >= self.batch_size or (len(buf) >= self.min_batch and not self.drop_last):
            merge = not self.drop_last and len(buf) < self.batch_size + self.min_batch
            yield self._emit(buf, rng, ring[k % 2], len(buf) if merge else self.batch_size)
            k += 1

    def _emit(
        self,
        buf: list[tuple[Any, ...]] | _PixelPool,
        rng: np.random.Generator,
        bufs: _BatchBuffers,
        n: int | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> Batch:
        n = min(self.batch_size if n is None else n, len(buf))
        if isinstance(buf, _PixelPool):  # one vectorised draw of the whole batch
            return buf.draw(n, self.shuffle, rng, bufs)
        if not self.shuffle:
            picks = buf[:n]
            del buf[:n]
            return bufs.fill(picks, self, rng, pool)
        picks = []
        for _ in range(n):
            j = int(rng.integers(len(buf)))
            picks.append(buf[j])
            buf[j] = buf[-1]
            buf.pop()
        return bufs.fill(picks, self, rng, pool)
