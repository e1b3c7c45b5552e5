"""Input preprocessing shared by training and predict, so both see exactly the same numbers.

The array functions use the numpy API only, so they work on numpy arrays (the training stream) and on dask
arrays (predict) alike; :func:`declared_valid` works on the cube.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from geoarray.errors import GeoArrayWarning


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
        if _stays_finite(x.dtype, m, s, scale):  # e.g. uint16 reflectance: no NaN to look for
            ok = np.ones(tuple(n for i, n in enumerate(z.shape) if i != band_axis % z.ndim), dtype=bool)
        else:
            ok = np.asarray(np.isfinite(z).all(axis=band_axis))
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


def _stays_finite(dtype: np.dtype, m: np.ndarray, s: np.ndarray, scale: float) -> bool:
    """Whether ``(x * scale - m) / s`` is finite for every value of an integer ``dtype`` (no NaN check needed)."""
    if dtype.kind not in "ui" or not (np.isfinite(m).all() and np.isfinite(s).all() and (s != 0).all()):
        return False
    info = np.iinfo(dtype)
    top = (max(abs(int(info.min)), int(info.max)) * abs(float(scale)) + np.abs(m).max()) / np.abs(s).min()
    return bool(top < 1e37)


def band_stats(
    cube: Any, bands: list[str], *, var: str = "imagery", scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """Per-band mean and std over the cube's valid pixels, in one dask pass.

    A value counts where it is finite and, when the cube has ``valid(time, y, x)``, where ``valid`` is True;
    labels play no part. A band without a valid value gets mean 0 and std 1, and a constant band std 1.

    The same pass measures each band's spread of magnitudes and warns (:class:`~geoarray.errors.
    GeoArrayWarning`) when a band cannot be normalised sensibly in float32: when its largest valid magnitude is
    more than 2**24 (~1.7e7, float32's precision) times the typical one (the 1st percentile of the non-zero
    magnitudes), typically a fill value such as 1e30 or -3.4e38 that is not masked. Its mean and std are then
    set by those values, and every other pixel normalises to nearly the same number. It also warns when at
    least 1 % of a band's valid values are exactly 0 while its other values stay within 16x of its largest
    (no small values lead up to 0): an undeclared nodata such as a Landsat scene's collar. A band with no
    valid value warns too.
    """
    import dask
    import dask.array as dsa

    img = cube[var].sel(band=bands).transpose("time", "band", "y", "x")
    x = dsa.asarray(img.data).astype(np.float64) * scale
    ok = dsa.isfinite(x)
    if "valid" in cube.data_vars:
        ok = ok & dsa.asarray(cube["valid"].transpose("time", "y", "x").data).astype(bool)[:, None]
    xz = dsa.where(ok, x, 0.0)
    axes = (0, 2, 3)
    nb = [len(c) for c in xz.chunks]
    hist = xz.map_blocks(
        _magnitude_histogram,
        dtype=np.int64,
        new_axis=4,
        chunks=((1,) * nb[0], xz.chunks[1], (1,) * nb[2], (1,) * nb[3], (256,)),
    ).sum(axis=axes)
    s, ss, n, lo, hi, h = dask.compute(
        xz.sum(axis=axes),
        (xz * xz).sum(axis=axes),
        ok.sum(axis=axes),
        dsa.where(ok, x, np.inf).min(axis=axes),
        dsa.where(ok, x, -np.inf).max(axis=axes),
        hist,
    )
    n1 = np.maximum(n, 1)
    mean = s / n1
    var_ = np.maximum(ss / n1 - mean**2, 0.0)
    std = np.sqrt(var_)
    std = np.where(std > 1e-12, std, 1.0)
    _check_bands([str(b) for b in bands], n, lo, hi, h, mean, std)
    return [float(v) for v in mean], [float(v) for v in std]


_SPAN_BITS = 24  # float32's significand: beyond 2**24 the typical values drown next to the largest ones
_ZERO_GAP_BITS = 4  # exact zeros while the other values stay within 16x of the largest: zero is a fill value


def _magnitude_histogram(block: np.ndarray) -> np.ndarray:
    """Counts of float32 binary exponents of ``|block|`` per band: ``(1, bands, 1, 1, 256)``.

    Bin 0 holds zeros (and subnormals), bin 255 values beyond float32's range; bin ``e`` holds magnitudes in
    ``[2**(e-127), 2**(e-126))``. Bit arithmetic on the float32 representation: cheap beside the read.
    """
    with np.errstate(over="ignore"):
        e = (np.abs(block).astype(np.float32).view(np.uint32) >> 23) & 0xFF
    out = np.zeros((1, block.shape[1], 1, 1, 256), dtype=np.int64)
    for k in range(block.shape[1]):
        out[0, k, 0, 0] = np.bincount(e[:, k].ravel(), minlength=256)
    return out


def _check_bands(
    bands: list[str],
    n: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    hist: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> None:
    """Warn about bands that normalisation cannot serve: no valid value, a spread beyond float32, zero fill."""
    zero_fill: list[tuple[str, float]] = []
    for k, band in enumerate(bands):
        if n[k] == 0:
            warnings.warn(
                f"band {band!r} has no valid value in the cube (NaN or valid=False everywhere); expected some, "
                "to compute its normalisation. It gets mean 0 and std 1 and the model sees zeros: drop it with "
                "bands=, or check how it was loaded.",
                GeoArrayWarning,
                stacklevel=3,
            )
            continue
        nz = hist[k, 1:]
        if nz.sum() == 0:
            continue
        top = int(np.flatnonzero(nz)[-1]) + 1
        p1 = int(np.searchsorted(np.cumsum(nz), 0.01 * nz.sum())) + 1
        if top == 255 or top - p1 > _SPAN_BITS:
            extreme = hi[k] if abs(hi[k]) >= abs(lo[k]) else lo[k]
            warnings.warn(
                f"band {band!r}: its valid values reach {extreme:.3g} while typical magnitudes are about "
                f"{2.0 ** (p1 - 127):.2g} (1st percentile), a spread float32 normalisation cannot resolve (mean "
                f"{mean[k]:.3g}, std {std[k]:.3g}: most pixels normalise to the same number). If {extreme:.3g} "
                "is a fill value, mark it invalid: set the cube's valid to False where the band holds it, or "
                "declare it as the source rasters' nodata (from_geotiff turns nodata into valid=False); if the "
                "values are genuine, rescale the band (e.g. log) before training.",
                GeoArrayWarning,
                stacklevel=3,
            )
        zeros = int(hist[k, 0]) - (
            int(hist[k].sum()) - int(n[k])
        )  # bin 0 also counts invalid values (set to 0)
        if zeros >= 0.01 * n[k] and top - p1 <= _ZERO_GAP_BITS:
            zero_fill.append((band, zeros / n[k]))
    if zero_fill:
        warnings.warn(
            f"bands {[b for b, _ in zero_fill]}: up to {max(f for _, f in zero_fill):.1%} of their valid values "
            "are exactly 0, and no small values lead up to 0 (the others stay within 16x of the largest): 0 "
            "looks like an undeclared nodata (a scene collar or fill), which the statistics and the chips then "
            "take as data. Mark it invalid: declare it as the source rasters' nodata (gdal_edit.py -a_nodata 0; "
            "from_geotiff turns nodata into valid=False), or set the cube's valid to False where the bands are 0.",
            GeoArrayWarning,
            stacklevel=3,
        )


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


def date_hits(index: Any, when: Any) -> np.ndarray:
    """Positions in ``index`` (a ``pandas.DatetimeIndex``) that ``when`` names: a day (midnight) matches any
    time on that day; a time of day must match exactly. Time-zone-aware ``when`` is compared in UTC."""
    import pandas as pd

    t = pd.Timestamp(when)
    t = t.tz_convert(None) if t.tzinfo else t
    return np.flatnonzero(index.normalize() == t if t == t.normalize() else index == t)


def declared_valid(img: xr.DataArray, bands: list[str]) -> xr.DataArray | None:
    """``valid`` from the imagery's ``nodata`` (or ``_FillValue``) attr when the cube has no ``valid`` variable:
    a pixel is invalid where every band holds its nodata value, as :func:`geoarray.from_geotiff` decides. A cube
    built by hand from ``rioxarray.open_rasterio`` carries the file's nodata only there; without this its fill
    was run through the model as data. The store's own ``_FillValue`` (in the encoding) counts too: xarray
    decodes it to NaN, which the direct (halo-free) store reads would bypass. None when nothing is declared."""
    # the encoding's _FillValue: xarray decoded those pixels to NaN, but a direct store read sees the raw fill
    for value in (img.attrs.get("nodata"), img.attrs.get("_FillValue"), img.encoding.get("_FillValue")):
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * img.sizes["band"]
        try:
            nums = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if nums.size != img.sizes["band"] or not np.isfinite(nums).any():  # NaN fill: NaN is invalid already
            return None
        fill = xr.DataArray(nums, dims="band", coords={"band": img["band"].values})
        if [str(b) for b in img["band"].values] != bands:
            img, fill = img.sel(band=bands), fill.sel(band=bands)
        return (img != fill).any("band").transpose("time", "y", "x")
    return None
