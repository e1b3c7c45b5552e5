"""Chips: windows over a cube, a spatial-block train/validation split, and the batch stream that feeds torch.

A chip is a :class:`Window` (index slices into the cube), never a copy. Windows are planned inside *tiles*
(the split unit) and tiles inside *read blocks* (whole storage chunks), so the stream reads each block once
per epoch and cuts every chip it needs from it: read amplification ~1. Validation tiles are whole tiles,
and training chips keep ``buffer`` pixels away from them, so no training chip touches validation pixels.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr

from geoarray._preprocess import normalize_fill
from geoarray.errors import TrainError

__all__ = ["Batch", "ChipPlan", "ChipStream", "Rect", "Window", "plan_chips", "region_labels"]

IGNORE = -100  # label value the losses ignore (torch's CrossEntropyLoss default)
TimeSelection = Literal["each", "all"] | Sequence[int]


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle ``[y0, y1) x [x0, x1)``."""

    y0: int
    y1: int
    x0: int
    x1: int

    def intersects(self, o: Rect, margin: int = 0) -> bool:
        return not (
            self.y1 + margin <= o.y0
            or o.y1 + margin <= self.y0
            or self.x1 + margin <= o.x0
            or o.x1 + margin <= self.x0
        )


@dataclass(frozen=True)
class Window:
    """One chip: time indices, a pixel rectangle, and the read block it is cut from."""

    t: tuple[int, ...]
    y: int
    x: int
    size: int
    block: int
    label: int | None = None  # chip-level label (classification)

    @property
    def rect(self) -> Rect:
        return Rect(self.y, self.y + self.size, self.x, self.x + self.size)


@dataclass
class ChipPlan:
    """Windows for training and validation, with the blocks they are read from."""

    blocks: list[Rect]
    tiles: list[Rect]
    val_tiles: list[int]
    train: list[Window]
    val: list[Window]
    chip_size: int
    times: list[tuple[int, ...]]
    dropped: dict[str, int] = field(default_factory=dict)

    def val_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(y, x)`` mask of the validation tiles: where held-out scores are computed."""
        held = np.zeros(shape, dtype=bool)
        for i in self.val_tiles:
            t = self.tiles[i]
            held[t.y0 : t.y1, t.x0 : t.x1] = True
        return held

    def summary(self) -> str:
        return (
            f"{len(self.train)} training and {len(self.val)} validation chips of {self.chip_size}² from "
            f"{len(self.tiles)} tiles ({len(self.val_tiles)} for validation) in {len(self.blocks)} read blocks"
        )


def _chunk_edges(chunks: tuple[int, ...]) -> np.ndarray:
    return np.cumsum((0, *chunks))


def _take_times(a: np.ndarray, tpos: list[int]) -> np.ndarray:
    """``a[tpos]`` as a view when the positions are a contiguous run (the usual case), a copy otherwise."""
    if tpos == list(range(tpos[0], tpos[0] + len(tpos))):
        return a[tpos[0] : tpos[0] + len(tpos)]
    return a[tpos]


def _time_sets(n: int, times: TimeSelection) -> list[tuple[int, ...]]:
    if isinstance(times, str):
        if times == "each":
            return [(i,) for i in range(n)]
        if times == "all":
            return [tuple(range(n))]
        raise TrainError(f"times={times!r}; expected 'each', 'all' or a list of time indices.")
    idx = tuple(int(i) for i in times)
    bad = [i for i in idx if not -n <= i < n]
    if bad or not idx:
        raise TrainError(f"times={list(idx)} out of range for a cube with {n} dates.")
    return [tuple(i % n for i in idx)]


def plan_chips(
    cube: xr.Dataset,
    *,
    chip_size: int,
    mode: Literal["grid", "random"] = "grid",
    stride: int | None = None,
    n_random: int = 16,
    times: TimeSelection = "each",
    val_fraction: float = 0.2,
    tile_size: int | None = None,
    buffer: int = 1,
    min_valid: float = 0.0,
    min_positive: int = 0,
    positive_classes: Sequence[int] | None = None,
    labels: str | None = "labels",
    multiple_of: int = 1,
    var: str = "imagery",
    seed: int = 0,
) -> ChipPlan:
    """Plan chips over a cube: windows, filters and the spatial-block train/validation split.

    Parameters
    ----------
    cube
        The cube (lazy); only ``valid`` and ``labels`` are read here, to apply the filters.
    chip_size
        Chip height and width in pixels.
    mode
        ``"grid"``: windows every ``stride`` pixels; ``"random"``: ``n_random`` seeded windows per tile.
    times
        ``"each"`` (one chip per date), ``"all"`` (the whole series per chip) or explicit time indices
        (e.g. ``[0, 3]`` for a pair).
    val_fraction
        Fraction of tiles held out for validation (0 for none).
    tile_size
        Size of the split tiles; default: the read blocks when there are at least 8 of them, else a multiple
        of ``chip_size`` (at least two chips wide) that gives about 8 tiles.
    buffer
        Pixels a training chip keeps from any validation tile.
    min_valid
        Minimum fraction of valid pixels (``valid`` and finite) in a chip.
    min_positive
        Minimum number of positive label pixels in a chip (seed 003's slumps filter).
    positive_classes
        Which class ids count as positive (default: every class but 0).
    labels
        The label variable used by ``min_positive`` (None to skip).
    multiple_of
        The model stride: ``chip_size`` must be a multiple of it.
    seed
        Seed of the random windows and of the split.

    Returns
    -------
    ChipPlan

    Raises
    ------
    TrainError
        A chip larger than the cube, a chip size that isn't a multiple of the stride, a split with no
        training tiles, or filters that leave no chip (the message names the filter).
    """
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    if chip_size <= 0 or chip_size > min(ny, nx):
        raise TrainError(
            f"chip_size={chip_size} does not fit the cube ({ny} x {nx} px); expected at most {min(ny, nx)}. "
            "Use a smaller chip_size."
        )
    if chip_size % multiple_of:
        lo = chip_size // multiple_of * multiple_of
        raise TrainError(
            f"chip_size={chip_size} is not a multiple of the model stride {multiple_of}; "
            f"use {lo or multiple_of} or {lo + multiple_of}."
        )
    if not 0 <= val_fraction < 1:
        raise TrainError(f"val_fraction={val_fraction}; expected 0 <= val_fraction < 1.")
    rng = np.random.default_rng(seed)
    da = cube[var]
    ychunks = da.chunks[2] if da.chunks else (ny,)
    xchunks = da.chunks[3] if da.chunks else (nx,)
    blocks = _read_blocks(_chunk_edges(ychunks), _chunk_edges(xchunks), chip_size)
    tiles = _tiles(blocks, chip_size, tile_size, ny, nx)
    ntiles = len(tiles)
    nval = round(val_fraction * ntiles)
    if val_fraction > 0:
        nval = max(1, nval)
    if nval >= ntiles:
        raise TrainError(
            f"val_fraction={val_fraction} leaves no training tiles ({ntiles} tiles of {tiles[0][0].y1 - tiles[0][0].y0} px, "
            f"{nval} for validation). Lower val_fraction, or pass a smaller tile_size."
        )
    val_tiles = sorted(rng.choice(ntiles, size=nval, replace=False).tolist()) if nval else []
    val_set = set(val_tiles)
    tsets = _time_sets(cube.sizes["time"], times)
    step = stride or chip_size

    train: list[Window] = []
    val: list[Window] = []
    dropped = {"buffer": 0, "min_valid": 0, "min_positive": 0}
    for ti, (tile, bi) in enumerate(tiles):
        rects = _windows_in(tile, chip_size, mode, step, n_random, rng)
        for y, x in rects:
            r = Rect(y, y + chip_size, x, x + chip_size)
            is_val = ti in val_set
            if not is_val and any(r.intersects(tiles[v][0], margin=buffer) for v in val_tiles):
                dropped["buffer"] += len(tsets)
                continue
            for t in tsets:
                (val if is_val else train).append(Window(t, y, x, chip_size, bi))
    plan = ChipPlan(
        blocks=blocks,
        tiles=[t for t, _ in tiles],
        val_tiles=val_tiles,
        train=train,
        val=val,
        chip_size=chip_size,
        times=tsets,
        dropped=dropped,
    )
    if min_valid > 0 or (min_positive > 0 and labels):
        _apply_filters(cube, plan, min_valid, min_positive, positive_classes, labels, var)
    if not plan.train:
        reasons = {k: v for k, v in plan.dropped.items() if v}
        raise TrainError(
            f"every training chip was filtered out (dropped: {reasons or 'none; the split left no room'}). "
            "Relax the filter that dropped them (min_valid, min_positive, buffer) or use a smaller chip_size."
        )
    return plan


def _read_blocks(ye: np.ndarray, xe: np.ndarray, chip: int) -> list[Rect]:
    """Read units: groups of whole chunks at least one chip wide (so a chip never straddles two units)."""

    def groups(edges: np.ndarray) -> list[tuple[int, int]]:
        out, start = [], 0
        for e in edges[1:]:
            if e - edges[start] >= chip or e == edges[-1]:
                out.append((int(edges[start]), int(e)))
                start = int(np.searchsorted(edges, e))
        if len(out) > 1 and out[-1][1] - out[-1][0] < chip:  # merge a thin last group into its neighbour
            out[-2:] = [(out[-2][0], out[-1][1])]
        return out

    return [Rect(y0, y1, x0, x1) for y0, y1 in groups(ye) for x0, x1 in groups(xe)]


def _tiles(blocks: list[Rect], chip: int, tile_size: int | None, ny: int, nx: int) -> list[tuple[Rect, int]]:
    if tile_size is None and len(blocks) >= 8:
        return [(b, i) for i, b in enumerate(blocks)]
    if tile_size is None:
        tile_size = max(2 * chip, int(math.sqrt(ny * nx / 8)) // chip * chip)
    if tile_size < chip:
        raise TrainError(f"tile_size={tile_size} is smaller than chip_size={chip}.")
    out = []
    for i, b in enumerate(blocks):
        for y0 in range(b.y0, b.y1, tile_size):
            for x0 in range(b.x0, b.x1, tile_size):
                t = Rect(y0, min(y0 + tile_size, b.y1), x0, min(x0 + tile_size, b.x1))
                if t.y1 - t.y0 >= chip and t.x1 - t.x0 >= chip:
                    out.append((t, i))
                elif out and out[-1][1] == i:  # a sliver: give it to the previous tile of the block
                    p = out[-1][0]
                    out[-1] = (Rect(min(p.y0, t.y0), max(p.y1, t.y1), min(p.x0, t.x0), max(p.x1, t.x1)), i)
    return out


def _windows_in(
    tile: Rect, chip: int, mode: str, step: int, n_random: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    h, w = tile.y1 - tile.y0, tile.x1 - tile.x0
    if h < chip or w < chip:
        return []
    if mode == "grid":
        ys = list(range(tile.y0, tile.y1 - chip + 1, step))
        xs = list(range(tile.x0, tile.x1 - chip + 1, step))
        return [(y, x) for y in ys for x in xs]
    if mode == "random":
        yy = rng.integers(tile.y0, tile.y1 - chip + 1, size=n_random)
        xx = rng.integers(tile.x0, tile.x1 - chip + 1, size=n_random)
        return list(zip(yy.tolist(), xx.tolist(), strict=True))
    raise TrainError(f"mode={mode!r}; expected 'grid' or 'random'.")


def _apply_filters(
    cube: xr.Dataset,
    plan: ChipPlan,
    min_valid: float,
    min_positive: int,
    positive_classes: Sequence[int] | None,
    labels: str | None,
    var: str,
) -> None:
    """Drop windows below the valid fraction / positive count, reading only ``valid`` and ``labels``."""
    has_valid = "valid" in cube.data_vars
    lab = cube[labels] if labels and labels in cube.data_vars and min_positive > 0 else None
    nodata = int(lab.attrs.get("nodata", -1)) if lab is not None else -1
    by_block: dict[int, list[tuple[str, int, Window]]] = defaultdict(list)
    for split in ("train", "val"):
        for i, w in enumerate(getattr(plan, split)):
            by_block[w.block].append((split, i, w))
    keep: dict[str, set[int]] = {"train": set(), "val": set()}
    for bi, items in by_block.items():
        b = plan.blocks[bi]
        sl: dict[str, Any] = {"y": slice(b.y0, b.y1), "x": slice(b.x0, b.x1)}
        if has_valid:
            ok = np.asarray(cube["valid"].isel(sl).values, dtype=bool)
        else:
            ok = np.ones((cube.sizes["time"], b.y1 - b.y0, b.x1 - b.x0), dtype=bool)
        if min_valid > 0:
            img = cube[var].isel(sl)
            ok = ok & np.isfinite(np.asarray(img.values, dtype=np.float32)).all(axis=1)
        pos = None
        if lab is not None:
            lv = np.asarray(lab.isel(sl).values)
            pc = np.isin(lv, positive_classes) if positive_classes is not None else (lv != 0) & (lv != nodata)
            pos = pc if pc.ndim == 3 else pc[None]
        for split, i, w in items:
            ys, xs = slice(w.y - b.y0, w.y - b.y0 + w.size), slice(w.x - b.x0, w.x - b.x0 + w.size)
            t = list(w.t)
            if min_valid > 0 and ok[t][:, ys, xs].mean() < min_valid:
                plan.dropped["min_valid"] += 1
                continue
            if pos is not None:
                pt = pos[t] if pos.shape[0] > 1 else pos
                if int(pt[:, ys, xs].sum()) < min_positive:
                    plan.dropped["min_positive"] += 1
                    continue
            keep[split].add(i)
    plan.train = [w for i, w in enumerate(plan.train) if i in keep["train"]]
    plan.val = [w for i, w in enumerate(plan.val) if i in keep["val"]]


def region_labels(
    plan: ChipPlan,
    cube: xr.Dataset,
    regions: str | Any,
    *,
    property: str,
    classes: Sequence[str] | None = None,
) -> list[str]:
    """Give every window a chip label from a vector file (seed 002's country labels).

    Polygons from ``regions`` (a GeoJSON path or a GeoDataFrame-like with ``__geo_interface__``) are
    rasterised onto the cube grid by the value of ``property``; a chip's label is the majority region under
    it. Chips outside every region are dropped. Returns the class names (sorted property values, unless
    ``classes`` is given).
    """
    import json
    from pathlib import Path

    from pyproj import Transformer
    from rasterio.features import rasterize
    from shapely.geometry import mapping, shape
    from shapely.ops import transform as shp_transform

    if isinstance(regions, (str, Path)):
        doc = json.loads(Path(regions).read_text())
        src_crs = doc.get("crs", {}).get("properties", {}).get("name", "EPSG:4326")
    else:
        doc = regions.__geo_interface__
        src_crs = getattr(regions, "crs", None) or "EPSG:4326"
    feats = [f for f in doc["features"] if property in (f.get("properties") or {})]
    if not feats:
        raise TrainError(f"no feature of the region file has the property {property!r}.")
    values = sorted({str(f["properties"][property]) for f in feats})
    names = list(classes) if classes is not None else values
    missing = [v for v in values if v not in names]
    if missing:
        raise TrainError(f"region values {missing} are not in classes={names}.")
    to_cube = Transformer.from_crs(src_crs, cube.rio.crs, always_xy=True).transform
    shapes = [
        (
            mapping(shp_transform(to_cube, shape(f["geometry"]))),
            names.index(str(f["properties"][property])) + 1,
        )
        for f in feats
    ]
    raster = rasterize(
        shapes,
        out_shape=(cube.sizes["y"], cube.sizes["x"]),
        transform=cube.rio.transform(recalc=True),
        fill=0,
        dtype="int32",
    )

    def label(w: Window) -> int | None:
        vals = raster[w.y : w.y + w.size, w.x : w.x + w.size].ravel()
        vals = vals[vals > 0]
        return int(np.bincount(vals).argmax()) - 1 if vals.size else None

    for split in ("train", "val"):
        labelled = [Window(w.t, w.y, w.x, w.size, w.block, label(w)) for w in getattr(plan, split)]
        setattr(plan, split, [w for w in labelled if w.label is not None])
    if not plan.train:
        raise TrainError(
            "no training chip lies inside a region of the vector file; check its CRS and extent."
        )
    return names


# ------------------------------------------------------------------------------------------------------
# The batch stream
# ------------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A training batch as torch tensors.

    ``x``: ``(B, C, H, W)`` image chips, ``(B, T, C, H, W)`` sequences or ``(B, T, C)`` pixel series;
    ``y``: ``(B, H, W)`` class ids (``-100`` = ignore), ``(B, K, H, W)`` multi-label targets (``-100`` =
    ignore), ``(B, T, H, W)`` per-frame ids, or ``(B,)`` chip / pixel labels; ``dates``: ``(B, T)`` days
    of year (sequences and pixels); ``valid``: ``(B, T)`` for pixel series.
    """

    x: Any
    y: Any
    dates: Any = None
    valid: Any = None


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
        self.var = var
        self.epoch = 0
        self.reads = 0  # block reads, for read-amplification checks
        self._lock = threading.Lock()
        lab = cube[labels] if labels and labels in cube.data_vars else None
        self._lab_dims = tuple(map(str, lab.dims)) if lab is not None else ()
        self._nodata = int(lab.attrs.get("nodata", -1)) if lab is not None else -1
        self.multilabel = "class" in self._lab_dims
        present = [str(b) for b in cube["band"].values]
        self._band_idx = [present.index(b) for b in self.bands]
        doy = cube["time"].to_index().dayofyear.to_numpy()
        self._doy = doy.astype(np.float32)
        by_block: dict[int, list[Window]] = defaultdict(list)
        for w in self.windows:
            by_block[w.block].append(w)
        self._by_block = dict(by_block)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        if self.kind == "pixels":
            return len(self.windows) * self.pixels_per_window
        return len(self.windows)

    # -- reading -------------------------------------------------------------------------------------
    def _read(self, bi: int) -> dict[str, Any]:
        import dask

        from geoarray._source import read, source_of

        b = self.plan.blocks[bi]
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
            with dask.config.set(scheduler="synchronous"):
                (computed,) = dask.compute(lazy)
            vals.update(computed)
        with self._lock:
            self.reads += 1
        x, ok = normalize_fill(np.asarray(vals["img"]), vals.get("valid"), self.mean, self.std, self.scale)
        return {"x": x, "ok": ok, "labels": vals.get("labels"), "times": times, "rect": b}

    def _target(self, block: dict[str, Any], w: Window, ys: slice, xs: slice) -> np.ndarray:
        tpos = [block["times"].index(t) for t in w.t]
        lab = block["labels"]
        ok = _take_times(block["ok"][:, ys, xs], tpos)
        if "time" in self._lab_dims:
            lt = _take_times(lab[..., ys, xs], tpos)
        else:
            lt = np.broadcast_to(lab[..., ys, xs], (len(tpos), *lab[..., ys, xs].shape))
        lt = lt.astype(np.int64)
        if self.multilabel:  # (T, K, h, w)
            bad = (lt == self._nodata) | ~ok[:, None]
        else:
            bad = (lt == self._nodata) | ~ok
        return np.where(bad, IGNORE, lt)

    def _samples(self, block: dict[str, Any], rng: np.random.Generator) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        b: Rect = block["rect"]
        for w in self._by_block[block["bi"]]:
            ys, xs = slice(w.y - b.y0, w.y - b.y0 + w.size), slice(w.x - b.x0, w.x - b.x0 + w.size)
            tpos = [block["times"].index(t) for t in w.t]
            x = _take_times(block["x"][:, :, ys, xs], tpos)  # (T, C, h, w): a view into the block
            doy = self._doy[list(w.t)]
            if self.kind == "pixels":
                out.extend(self._pixel_samples(block, w, x, ys, xs, doy, rng))
                continue
            if self.kind == "chip":
                out.append(
                    (x[0] if len(tpos) == 1 else x, np.int64(w.label if w.label is not None else IGNORE), doy)
                )
                continue
            y = self._target(block, w, ys, xs) if self._lab_dims else None
            if self.kind == "image":
                out.append((x[0], None if y is None else y[0], doy))
            else:
                out.append((x, y, doy))
        return out

    def _pixel_samples(
        self,
        block: dict[str, Any],
        w: Window,
        x: np.ndarray,
        ys: slice,
        xs: slice,
        doy: np.ndarray,
        rng: np.random.Generator,
    ) -> list[tuple[Any, ...]]:
        tpos = [block["times"].index(t) for t in w.t]
        ok = _take_times(block["ok"][:, ys, xs], tpos)  # (T, h, w)
        lab = block["labels"]
        lt = lab[..., ys, xs] if lab is not None else None
        if lt is not None and lt.ndim == 3:  # labels(time, y, x): a pixel series takes the last date's label
            lt = lt[tpos[-1]]
        usable = ok.any(0)
        if lt is not None:
            usable &= lt != self._nodata
        idx = np.flatnonzero(usable.ravel())
        if idx.size > self.pixels_per_window:
            idx = rng.choice(idx, self.pixels_per_window, replace=False)
        t, c = x.shape[:2]
        series = x.reshape(t, c, -1)[:, :, idx].transpose(2, 0, 1)  # (n, T, C)
        valid = ok.reshape(t, -1)[:, idx].T
        labels = lt.ravel()[idx].astype(np.int64) if lt is not None else np.full(idx.size, IGNORE)
        return [(series[i], labels[i], doy, valid[i]) for i in range(idx.size)]

    # -- iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = list(self._by_block)
        if self.shuffle:
            rng.shuffle(order)
        buf: list[tuple[Any, ...]] = []
        cap = self.shuffle_blocks * max(1, self.num_samples // max(1, len(order))) if self.shuffle else 0
        ring = [_BatchBuffers(), _BatchBuffers()]
        k = 0
        with ThreadPoolExecutor(self.readers, thread_name_prefix="geoarray-chips") as pool:
            # bounded prefetch: keep `readers + 1` block reads in flight
            futures = [pool.submit(self._read, bi) for bi in order[: self.readers + 1]]
            nxt = len(futures)
            for i in range(len(order)):
                block = futures[i].result()
                futures[i] = None  # type: ignore[call-overload]
                if nxt < len(order):
                    futures.append(pool.submit(self._read, order[nxt]))
                    nxt += 1
                block["bi"] = order[i]
                buf.extend(self._samples(block, rng))
                while len(buf) >= self.batch_size + cap:
                    yield self._emit(buf, rng, ring[k % 2])
                    k += 1
        if self.shuffle:
            rng.shuffle(buf)
        while len(buf) >= self.batch_size or (buf and not self.drop_last):
            yield self._emit(buf, rng, ring[k % 2])
            k += 1

    def _emit(self, buf: list[tuple[Any, ...]], rng: np.random.Generator, bufs: _BatchBuffers) -> Batch:
        n = min(self.batch_size, len(buf))
        picks = []
        for _ in range(n):
            j = int(rng.integers(len(buf))) if self.shuffle else 0
            picks.append(buf[j])
            if self.shuffle:
                buf[j] = buf[-1]
                buf.pop()
            else:
                buf.pop(0)
        return bufs.fill(picks, self, rng)


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

    def fill(self, picks: list[tuple[Any, ...]], stream: ChipStream, rng: np.random.Generator) -> Batch:
        import torch

        n = len(picks)
        x = self._get("x", (n, *picks[0][0].shape), np.float32)
        has_y = picks[0][1] is not None
        y = self._get("y", (n, *np.shape(picks[0][1])), np.int64) if has_y else None
        for i, p in enumerate(picks):
            x[i] = p[0]
            if y is not None:
                y[i] = p[1]
        if stream.augment and stream.kind in ("image", "sequence"):
            _augment(x, y, rng)
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(y) if y is not None else None
        dates = valid = None
        if stream.kind in ("sequence", "pixels"):
            dates = torch.from_numpy(np.stack([p[2] for p in picks]).astype(np.float32))
        if stream.kind == "pixels":
            valid = torch.from_numpy(np.stack([p[3] for p in picks]))
        return Batch(xt, yt, dates, valid)


def _augment(x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator) -> None:
    """In place, per sample: random flips and 90° rotations (image and target alike), radiometric jitter."""
    for i in range(x.shape[0]):
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        xi = np.rot90(x[i], k, axes=(-2, -1))
        if flip:
            xi = xi[..., ::-1]
        bands = x.shape[-3]
        gain = rng.normal(1.0, 0.05, size=(bands, 1, 1)).astype(np.float32)
        bias = rng.normal(0.0, 0.05, size=(bands, 1, 1)).astype(np.float32)
        x[i] = xi * gain + bias
        if y is not None and y.ndim >= 3:
            yi = np.rot90(y[i], k, axes=(-2, -1))
            y[i] = yi[..., ::-1] if flip else yi
