"""What :func:`geoarray.probe` feeds its protocols for a pixel time-series encoder: sampled labelled pixels, their
normalised series, and each encoder's features of them."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from geoarray.errors import ProbeError

__all__ = ["pixel_features"]


def pixel_features(
    cube: xr.Dataset,
    ck: Any,
    random_model: Any,
    lv: np.ndarray,
    nodata: int,
    *,
    var: str,
    max_pixels: int,
    tile_size: int,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Features per encoder (``ssl``, ``random_init``, ``raw``), class ids and the held-out mask of sampled
    labelled pixels of the ``(y, x)`` label array ``lv``."""
    from geoarray._preprocess import date_features

    meta = ck.meta
    series, valid, y, test = _sample(cube, meta, lv, nodata, var, max_pixels, tile_size, test_fraction, seed)
    dates = date_features(cube["time"].values, meta["input"].get("date_encoding"))
    feats = {
        "ssl": _embed(ck.model, series, valid, dates),
        "random_init": _embed(random_model, series, valid, dates),
        "raw": np.concatenate([series.reshape(len(series), -1), valid.astype(np.float32)], 1),
    }
    return feats, y, test


def _sample(
    cube: xr.Dataset,
    meta: dict[str, Any],
    lv: np.ndarray,
    nodata: int,
    var: str,
    max_pixels: int,
    tile_size: int,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised series ``(P, T, C)``, validity ``(P, T)``, class ids ``(P,)`` and the held-out mask ``(P,)``."""
    from geoarray._preprocess import normalize_fill

    inp = meta["input"]
    iy, ix = np.nonzero(lv != nodata)
    rng = np.random.default_rng(seed)
    if iy.size > max_pixels:
        keep = np.sort(rng.choice(iy.size, max_pixels, replace=False))
        iy, ix = iy[keep], ix[keep]
    tiles = (iy // tile_size) * (lv.shape[1] // tile_size + 1) + ix // tile_size
    uniq = np.unique(tiles)
    held = rng.random(uniq.size) < test_fraction
    test = np.isin(tiles, uniq[held])
    if test.all() or not test.any():
        raise ProbeError(
            f"the spatial split of {uniq.size} labelled tiles of {tile_size} px leaves "
            f"{'no training' if test.all() else 'no test'} pixel; pass a smaller tile_size or label more of the cube."
        )
    py, px = xr.DataArray(iy, dims="p"), xr.DataArray(ix, dims="p")
    img = cube[var].sel(band=list(inp["bands"])).transpose("time", "band", "y", "x").isel(y=py, x=px)
    vals = np.asarray(img.values)
    v = (
        cube["valid"].transpose("time", "y", "x").isel(y=py, x=px).values
        if "valid" in cube.data_vars
        else None
    )
    z, ok = normalize_fill(vals, v, inp["mean"], inp["std"], float(inp.get("scale", 1.0)))
    return (
        np.ascontiguousarray(z.transpose(2, 0, 1)),
        np.ascontiguousarray(ok.T),
        lv[iy, ix].astype(np.int64),
        test,
    )


def _embed(model: Any, series: np.ndarray, valid: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """The model's features of every series, 8192 at a time (eval mode, no gradients)."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(series), 8192):
            x = torch.from_numpy(series[s : s + 8192])
            v = torch.from_numpy(valid[s : s + 8192])
            d = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(dates, v.shape)))
            out.append(model(x, d, v).float().numpy())
    return np.concatenate(out)
