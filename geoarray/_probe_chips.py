"""What :func:`geoarray.probe` feeds its protocols for a chip encoder: labelled chips on the chip grid (the
majority class of a label raster or of rasterised regions), their spatial split, and each encoder's features.

Chips tile the cube from its corner (:mod:`geoarray._chip_kernel`, as :func:`geoarray.predict_chips` cuts them),
are read one strip of chips per date at a time, and are embedded as they are read, so memory holds the features
and one strip, never the chips of the whole sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from geoarray._chip_kernel import ChipGrid, chip_grid, cut_chips, embed
from geoarray.errors import ProbeError

__all__ = ["chip_features", "chip_labels"]

MIN_VALID = 0.5  # fraction of valid pixels a chip needs, as fit's default filter
_FLUSH = 256  # chips embedded at a time


def chip_labels(lv: np.ndarray, nodata: int, grid: ChipGrid) -> np.ndarray:
    """Majority class per chip of ``lv (L, y, x)``, ignoring ``nodata``: ``(L, ny, nx)``, -1 where no pixel is
    labelled (ties go to the lower class id)."""
    lab = cut_chips(lv, grid, grid.ny, grid.nx)  # (ny, nx, L, c, c)
    flat = lab.reshape(*lab.shape[:3], -1)
    ids = lv[lv != nodata]
    if ids.size == 0:
        return np.full((lv.shape[0], grid.ny, grid.nx), -1, np.int64)
    counts = np.stack([(flat == k).sum(-1) for k in range(int(ids.max()) + 1)], -1)
    out = counts.argmax(-1).astype(np.int64)
    out[counts.sum(-1) == 0] = -1
    return np.moveaxis(out, 2, 0)


def chip_features(
    cube: xr.Dataset,
    ck: Any,
    random_model: Any,
    lv: np.ndarray,
    nodata: int,
    *,
    var: str,
    chip_size: int,
    max_chips: int,
    tile_size: int,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Features per encoder (``ssl``, ``random_init``, ``raw``: per-band mean and std of the normalised chip),
    class ids and the held-out mask of sampled labelled chips. ``lv`` is ``(L, y, x)`` with L 1 (static labels)
    or one per date."""
    ny, nx, nt = cube.sizes["y"], cube.sizes["x"], cube.sizes["time"]
    if not 0 < chip_size <= min(ny, nx):
        raise ProbeError(
            f"chip_size={chip_size} does not fit the cube ({ny} x {nx} px); pass a smaller chip_size."
        )
    grid = chip_grid((ny, nx), chip_size, chip_size)
    lab = chip_labels(lv, nodata, grid)
    labs = np.broadcast_to(lab, (nt, grid.ny, grid.nx))  # static labels: every date of a chip
    t, i, j = np.nonzero(labs >= 0)
    if t.size == 0:
        raise ProbeError(
            f"no chip of {chip_size} px holds a labelled pixel; expected labels or regions over part of the cube."
        )
    y = labs[t, i, j]
    rng = np.random.default_rng(seed)
    if t.size > max_chips:
        keep = np.sort(rng.choice(t.size, max_chips, replace=False))
        t, i, j, y = t[keep], i[keep], j[keep], y[keep]
    per_row = -(-nx // tile_size)
    tiles = (i * chip_size // tile_size) * per_row + j * chip_size // tile_size
    uniq = np.unique(tiles)
    test = np.isin(tiles, uniq[rng.random(uniq.size) < test_fraction])
    if test.all() or not test.any():
        raise ProbeError(
            f"the spatial split of {uniq.size} labelled tiles of {tile_size} px leaves "
            f"{'no training' if test.all() else 'no test'} chip; pass a smaller tile_size or label more of the cube."
        )
    feats, ok = _read_and_embed(cube, ck, random_model, var, grid, t, i, j)
    if ok.sum() == 0:
        raise ProbeError(
            f"no labelled chip has {MIN_VALID:.0%} valid pixels; expected valid imagery under the labels."
        )
    return {k: v[ok] for k, v in feats.items()}, y[ok].astype(np.int64), test[ok]


def _read_and_embed(
    cube: xr.Dataset,
    ck: Any,
    random_model: Any,
    var: str,
    grid: ChipGrid,
    t: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each encoder's features of chips ``(t, i, j)`` (in that order) and whether each chip is valid enough."""
    from geoarray._preprocess import normalize_fill

    inp = ck.meta["input"]
    img = cube[var].sel(band=list(inp["bands"])).transpose("time", "band", "y", "x")
    valid = cube["valid"].transpose("time", "y", "x") if "valid" in cube.data_vars else None
    mean, std, scale = inp["mean"], inp["std"], float(inp.get("scale", 1.0))
    c = grid.chip_size
    n = t.size
    out: dict[str, list[np.ndarray]] = {"ssl": [], "random_init": [], "raw": []}
    where: list[np.ndarray] = []
    ok = np.zeros(n, bool)
    buf: list[np.ndarray] = []
    idx: list[int] = []

    def flush() -> None:
        if not buf:
            return
        x = np.stack(buf)
        out["ssl"].append(embed(ck.model, x, 64))
        out["random_init"].append(embed(random_model, x, 64))
        out["raw"].append(np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], 1))
        where.append(np.asarray(idx))
        buf.clear()
        idx.clear()

    order = np.lexsort((j, i, t))
    for key in np.unique(t[order] * grid.ny + i[order]):
        sel = order[(t[order] * grid.ny + i[order]) == key]
        tt, ii = int(t[sel[0]]), int(i[sel[0]])
        j0, j1 = int(j[sel].min()), int(j[sel].max()) + 1
        ys, xs = slice(ii * c, ii * c + c), slice(j0 * c, j1 * c)
        raw = np.asarray(img.isel(time=[tt], y=ys, x=xs).values)
        v = None if valid is None else np.asarray(valid.isel(time=[tt], y=ys, x=xs).values)
        z, good = normalize_fill(raw, v, mean, std, scale)
        for s in sel:
            off = (int(j[s]) - j0) * c
            ok[s] = good[0, :, off : off + c].mean() >= MIN_VALID
            buf.append(z[0, :, :, off : off + c])
            idx.append(int(s))
        if len(buf) >= _FLUSH:
            flush()
    flush()
    pos = np.concatenate(where)
    feats = {}
    for k, parts in out.items():
        f = np.concatenate(parts)
        full = np.zeros((n, f.shape[1]), np.float32)
        full[pos] = f
        feats[k] = full
    return feats, ok
