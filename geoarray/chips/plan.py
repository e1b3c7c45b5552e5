"""Chip planning: windows over a cube, the chip filters, and the spatial-block train/validation split.

A chip is a :class:`Window` (index slices into the cube), never a copy. Windows are planned inside *tiles*
(the split unit) and tiles inside *read blocks* (whole storage chunks), so the stream reads each block once
per epoch and cuts every chip it needs from it: read amplification ~1. Validation tiles are whole tiles,
and training chips keep ``buffer`` pixels away from them, so no training chip touches validation pixels.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr

from geoarray._preprocess import date_hits
from geoarray.chips.filters import apply_filters
from geoarray.errors import TrainError

__all__ = ["ChipPlan", "Rect", "TimeSelection", "Window", "plan_chips", "read_extent"]

TimeSelection = Literal["each", "all"] | Sequence[int | str | dt.date | np.datetime64]


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
    labelled_pixels: int | None = None  # labelled pixels in the read blocks that hold windows (filters only)

    def val_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(y, x)`` mask of the validation tiles: where held-out scores are computed."""
        held = np.zeros(shape, dtype=bool)
        for i in self.val_tiles:
            t = self.tiles[i]
            held[t.y0 : t.y1, t.x0 : t.x1] = True
        return held

    def extent(self, bi: int, windows: Iterable[Window]) -> Rect:
        """The pixels to read for ``windows`` of block ``bi``: see :func:`read_extent`."""
        return read_extent(self.blocks[bi], windows)

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


def _time_sets(dates: np.ndarray, times: TimeSelection) -> list[tuple[int, ...]]:
    n = len(dates)
    if isinstance(times, str):
        if times == "each":
            return [(i,) for i in range(n)]
        if times == "all":
            return [tuple(range(n))]
    if isinstance(times, str) or not isinstance(times, Iterable):
        raise TrainError(
            f"times={times!r}; expected 'each', 'all', or a list of time indices or dates, such as [0, 2] or "
            "['2021-05-01', '2021-06-01']."
        )
    idx = tuple(_time_index(dates, t) for t in times)
    if not idx:
        raise TrainError("times=[]; expected at least one time index or date, or 'each' / 'all'.")
    if len(set(idx)) < len(idx):
        shown = [str(np.datetime_as_string(dates[i], unit="D")) for i in idx]
        raise TrainError(
            f"times={list(times)!r} names a date twice ({shown}); expected each date once (a chip of one date "
            "repeated trains on the same pixels twice). Drop the repeat."
        )
    return [idx]


def _time_index(dates: np.ndarray, t: Any) -> int:
    """The position of one ``times=`` item: an index (negative counts from the end) or a date of the cube."""
    import pandas as pd

    n = len(dates)
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):
        if not -n <= int(t) < n:
            raise TrainError(
                f"times index {t} is out of range for a cube with {n} dates; expected {-n}..{n - 1}."
            )
        return int(t) % n
    index = pd.DatetimeIndex(dates)
    shown = [str(d.date()) if d == d.normalize() else str(d) for d in index]
    try:
        when = pd.Timestamp(t) if isinstance(t, (str, dt.date, np.datetime64)) else None
    except ValueError:
        when = None
    if when is None or when is pd.NaT:
        raise TrainError(
            f"times item {t!r} is neither a time index nor a date; the cube's dates are {shown}."
        )
    hits = date_hits(index, when)
    if hits.size == 0:
        raise TrainError(f"times item {t!r} is not a date of the cube; expected one of {shown}, or an index.")
    if hits.size > 1:
        raise TrainError(
            f"times item {t!r} matches {hits.size} dates {[shown[k] for k in hits]}; pass the full timestamp "
            f"or an index ({', '.join(map(str, hits))})."
        )
    return int(hits[0])


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
        ``"grid"``: windows every ``stride`` pixels, each inside one read block (whole chunks). ``"random"``:
        seeded windows whose origins are uniform over the scene (``n_random`` per training tile on average;
        they cross chunk edges like any other position, and those touching a validation tile plus ``buffer``
        are dropped), and ``n_random`` per validation tile inside it.
    times
        ``"each"`` (one chip per date), ``"all"`` (the whole series per chip) or explicit time indices or
        dates of the cube (e.g. ``[0, 3]`` or ``["2021-05-01", "2021-08-01"]`` for a pair; a day matches any
        time on that day).
    val_fraction
        Fraction of tiles held out for validation (0 for none).
    tile_size
        Size of the split tiles; default: the read blocks when there are at least 8 of them, else a multiple
        of ``chip_size`` (at least two chips wide) that gives about 8 tiles.
    buffer
        Pixels a training chip keeps from any validation tile.
    min_valid
        Minimum fraction of valid pixels (``valid`` and finite imagery) in a chip, over its dates.
    min_positive
        Minimum number of *labelled* pixels in a chip: pixels whose label is not the label variable's
        ``nodata`` on a date where the pixel is valid. Class 0 counts like any class (a chip labelled only with
        class 0 is kept); with ``positive_classes``, only pixels of those classes count (seed 003's slumps
        filter: ``min_positive=50, positive_classes=[1]``). 0: no threshold (but see ``positive_classes``).
    positive_classes
        Class ids that ``min_positive`` counts (default: every labelled pixel). For multi-label
        ``labels(class, y, x)``: a pixel counts when one of these classes' masks is 1. Given without
        ``min_positive`` (left at 0), it means ``min_positive=1``: a chip needs at least one pixel of these
        classes.
    labels
        The label variable. When the cube has it, chips without a single labelled, valid pixel are always
        dropped (they would train on nothing and make an all-ignored batch); pass None for unsupervised plans.
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
        training tiles, or filters that leave no chip (the message names the filter; ``dropped["unlabelled"]``
        counts chips with no labelled pixel).
    """
    if positive_classes is not None and min_positive == 0:
        min_positive = 1  # naming the classes asks for chips that hold them
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
    tsets = _time_sets(cube["time"].values, times)
    step = stride or chip_size

    if mode not in ("grid", "random"):
        raise TrainError(f"mode={mode!r}; expected 'grid' or 'random'.")
    if mode == "random" and (not isinstance(n_random, numbers.Integral) or isinstance(n_random, bool) or n_random < 1):
        raise TrainError(f"n_random={n_random!r}; expected a positive int (random windows per tile, on average).")
    train: list[Window] = []
    val: list[Window] = []
    dropped = {"buffer": 0, "min_valid": 0, "unlabelled": 0, "min_positive": 0}
    val_rects = [tiles[v][0] for v in val_tiles]
    for ti, (tile, bi) in enumerate(tiles):
        is_val = ti in val_set
        if mode == "random" and not is_val:
            continue  # training windows are drawn over the whole scene below
        rects = _windows_in(tile, chip_size, mode, step, n_random, rng)
        for y, x in rects:
            r = Rect(y, y + chip_size, x, x + chip_size)
            if not is_val and any(r.intersects(v, margin=buffer) for v in val_rects):
                dropped["buffer"] += len(tsets)
                continue
            for t in tsets:
                (val if is_val else train).append(Window(t, y, x, chip_size, bi))
    if mode == "random":
        # Uniform over the scene, across chunk edges: windows confined to their chunk would under-sample
        # everything near a chunk edge. The stream reads a window's block plus the neighbour strip it reaches.
        n = n_random * (ntiles - nval)
        yy = rng.integers(0, ny - chip_size + 1, size=n).tolist()
        xx = rng.integers(0, nx - chip_size + 1, size=n).tolist()
        home = _block_index(blocks)
        for y, x in zip(yy, xx, strict=True):
            r = Rect(y, y + chip_size, x, x + chip_size)
            if any(r.intersects(v, margin=buffer) for v in val_rects):
                dropped["buffer"] += len(tsets)
                continue
            bi = home(y, x)
            for t in tsets:
                train.append(Window(t, y, x, chip_size, bi))
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
    has_labels = bool(labels) and labels in cube.data_vars
    if (min_positive > 0 or positive_classes is not None) and not has_labels:
        raise TrainError(
            f"min_positive={min_positive} counts labelled pixels of the variable {labels!r}, which the cube does "
            f"not have (it has {sorted(map(str, cube.data_vars))}); pass labels= the label variable."
        )
    if min_valid > 0 or has_labels:
        apply_filters(
            cube, plan, min_valid, min_positive, positive_classes, labels if has_labels else None, var
        )
    if not plan.train:
        reasons = {k: v for k, v in plan.dropped.items() if v}
        cover = ""
        if reasons.get("unlabelled") and plan.labelled_pixels is not None:
            cover = (
                f" The labels cover {plan.labelled_pixels} pixels where chips were planned; 'unlabelled' chips "
                "have no labelled pixel on a valid date."
            )
        raise TrainError(
            f"every training chip was filtered out (dropped: {reasons or 'none; the split left no room'}).{cover} "
            "Relax the filter that dropped them (min_valid, min_positive, buffer), lower val_fraction, or use a "
            "smaller chip_size."
        )
    return plan


def read_extent(block: Rect, windows: Iterable[Window]) -> Rect:
    """What to read for a block's windows: the block, grown to cover windows that reach past its edges.

    Grid windows lie inside their block; random windows start in it and may reach into the neighbours.
    """
    y0, y1, x0, x1 = block.y0, block.y1, block.x0, block.x1
    for w in windows:
        y0, y1 = min(y0, w.y), max(y1, w.y + w.size)
        x0, x1 = min(x0, w.x), max(x1, w.x + w.size)
    return Rect(y0, y1, x0, x1)


def _block_index(blocks: list[Rect]) -> Any:
    """``(y, x) -> index`` of the read block holding that pixel (blocks tile the scene row by row)."""
    ys = np.array(sorted({b.y0 for b in blocks}))
    xs = np.array(sorted({b.x0 for b in blocks}))

    def home(y: int, x: int) -> int:
        iy = int(np.searchsorted(ys, y, side="right")) - 1
        ix = int(np.searchsorted(xs, x, side="right")) - 1
        return iy * len(xs) + ix

    return home


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
