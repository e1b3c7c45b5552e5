"""Input preprocessing shared by training and predict, so both see exactly the same numbers.

The functions use the numpy API only, so they work on numpy arrays (the training stream) and on dask arrays
(predict) alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def normalize_fill(
    x: Any, valid: Any | None, mean: Any, std: Any, scale: float = 1.0, *, band_axis: int = 1
) -> tuple[Any, Any]:
    """``(x * scale - mean) / std`` per band, with invalid pixels (NaN, or ``valid == False``) set to 0.

    Returns the float32 array and the pixel validity (``x`` without the band axis). 0 is the band mean after
    normalising, the least surprising value for a model to see.
    """
    shape = [1] * x.ndim
    shape[band_axis] = -1
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    if isinstance(x, np.ndarray):  # in place on one float32 copy: this runs per block in the hot paths
        z = x.astype(np.float32)
        if scale != 1.0:
            z *= np.float32(scale)
        z -= m
        z *= np.float32(1.0) / s
        ok = np.isfinite(z).all(axis=band_axis)
        if valid is not None:
            ok &= valid.astype(bool)
        if not ok.all():
            np.moveaxis(z, band_axis, -1)[~ok] = 0
        return z, ok
    z = (x.astype(np.float32) * np.float32(scale) - m) / s
    ok = np.isfinite(z).all(axis=band_axis)
    if valid is not None:
        ok = ok & valid.astype(bool)
    return np.where(np.expand_dims(ok, band_axis), z, np.float32(0)), ok


def band_stats(
    cube: Any, bands: list[str], *, var: str = "imagery", scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid pixels of the cube: one dask reduction (sum, sum of squares, count)."""
    import dask
    import dask.array as dsa

    x = cube[var].sel(band=bands).data
    x = dsa.asarray(x).astype(np.float64) * scale
    ok = dsa.isfinite(x)
    if "valid" in cube.data_vars:
        ok = ok & dsa.asarray(cube["valid"].data).astype(bool)[:, None]
    xz = dsa.where(ok, x, 0.0)
    axes = (0, 2, 3)
    s, ss, n = dask.compute(xz.sum(axis=axes), (xz * xz).sum(axis=axes), ok.sum(axis=axes))
    n = np.maximum(n, 1)
    mean = s / n
    var_ = np.maximum(ss / n - mean**2, 0.0)
    std = np.sqrt(var_)
    std = np.where(std > 1e-12, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def date_features(times: Any, encoding: str | None) -> np.ndarray:
    """What sequence and pixel models receive as ``dates``, float32, one value per time step.

    ``"days"``: days since 1970-01-01; anything else (``"doy"``, None): day of year, 1-based. Training and
    predict both call this, so a model sees the same numbers in both.
    """
    t = np.asarray(times).astype("datetime64[D]")
    if encoding == "days":
        return (t - np.datetime64("1970-01-01", "D")).astype(np.float32)
    year_start = t.astype("datetime64[Y]").astype("datetime64[D]")
    return (t - year_start).astype(np.float32) + np.float32(1.0)
