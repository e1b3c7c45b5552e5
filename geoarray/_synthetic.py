"""Shared pieces of the known-truth cubes in :mod:`geoarray.datasets`: smooth random fields, pixel-centre grids,
and :func:`change_cube` (seed 000's one-way land-cover change), re-exported there."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from geoarray._constants import LABEL_NODATA


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise (via FFT), unit variance; ``scale`` is the blob size in pixels."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * scale) ** 2 * (fy**2 + fx**2))
    out = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    return (out - out.mean()) / (out.std() + 1e-12)


def _grid(ny: int, nx: int, res: float, x0: float, y0: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a north-up grid whose top-left corner is (x0, y0)."""
    x = x0 + res * (np.arange(nx) + 0.5)
    y = y0 - res * (np.arange(ny) + 0.5)
    return y, x


CHANGE_CLASSES = ("water", "vegetation", "construction", "urban")


def change_cube(
    *,
    size: int = 96,
    n_times: int = 6,
    bands: Sequence[str] = ("blue", "green", "red", "nir"),
    blob_scale: float = 10.0,
    noise: float = 0.02,
    start: str = "2020-01-15",
    step_days: int = 60,
    sensors: Sequence[str] | None = None,
    crs: str = "EPSG:32633",
    resolution: float = 10.0,
    seed: int = 0,
    chunks: int | None = None,
) -> xr.Dataset:
    """A cube whose land cover changes in one direction only: vegetation is built over, never the reverse.

    Water (about 12 %) never changes. The rest starts as vegetation (with a seasonal near-infrared cycle and
    a speckle texture); a smooth "pressure" field decides when each pixel is developed: the developed share
    grows from 5 % at the first date to 55 % at the last. A pixel is ``construction`` (bright bare soil) on
    the date it is developed and ``urban`` (grey, with a street grid) from then on. So the order of two dates
    can be read from a pixel that changed between them, and from no other (which is what the arrow-of-time
    head of ``task="invariants"`` must learn), and a pixel's class sequence is always water, or vegetation
    then construction then urban, in that order.

    Parameters
    ----------
    size, n_times, bands, blob_scale, noise, start, step_days
        Height = width in pixels, dates, band names (one spectrum per class), blob size in pixels, per-pixel
        Gaussian noise (reflectance units), the first date and the spacing of dates.
    sensors
        Optional sensor names given to the dates in turn (a ``sensor`` coordinate along ``time``); each sensor
        after the first has its own small radiometric gain, as two instruments would.
    crs, resolution, seed, chunks
        Grid CRS and pixel size; the random seed (same seed, same cube); dask chunks ``(time=1, y=x=chunks)``.

    Returns
    -------
    xarray.Dataset
        ``imagery(time, band, y, x)`` float32 and ``labels(time, y, x)`` uint8 with attrs ``classes``
        (``water``, ``vegetation``, ``construction``, ``urban``) and ``nodata``.

    Examples
    --------
    >>> ds = change_cube(size=64, n_times=4, seed=1)
    >>> import numpy as np
    >>> bool((np.diff((ds.labels.values == 3).sum((1, 2))) >= 0).all())  # urban only grows
    True
    """
    import rioxarray  # noqa: F401  (registers .rio)

    ny = nx = int(size)
    nb, nt = len(bands), int(n_times)
    rng = np.random.default_rng(seed)
    water = _smooth_noise(rng, (ny, nx), blob_scale)
    water = water < np.quantile(water, 0.12)
    pressure = _smooth_noise(rng, (ny, nx), blob_scale) + 0.15 * rng.standard_normal((ny, nx))
    shares = np.linspace(0.05, 0.55, nt)
    land = pressure[~water]
    built_at = np.full((ny, nx), nt, dtype=np.int64)  # the date each pixel is developed (nt: never)
    for t in range(nt - 1, -1, -1):
        built_at[(pressure >= np.quantile(land, 1 - shares[t])) & ~water] = t
    # spectra: water dark, vegetation red-low/nir-high, construction bright, urban mid grey
    pos = np.linspace(0.0, 1.0, nb)
    sig = np.stack(
        [0.06 - 0.04 * pos, 0.08 + 0.45 * pos**3, 0.30 + 0.15 * pos, 0.18 + 0.02 * np.cos(6 * pos)]
    ).astype(np.float32)
    yy, xx = np.mgrid[0:ny, 0:nx]
    streets = 0.05 * ((xx % 7 < 2) | (yy % 7 < 2))
    speckle = 0.04 * _smooth_noise(rng, (ny, nx), 1.0)
    times = pd.date_range(start, periods=nt, freq=f"{step_days}D").values
    season = np.cos(2 * np.pi * (pd.DatetimeIndex(times).dayofyear.values - 200) / 365.25)
    names = list(sensors) if sensors else []
    gains = {s: 1.0 + 0.08 * k for k, s in enumerate(dict.fromkeys(names))}
    imagery = np.empty((nt, nb, ny, nx), dtype=np.float32)
    labels = np.empty((nt, ny, nx), dtype=np.uint8)
    for t in range(nt):
        lab = np.where(water, 0, np.where(built_at > t, 1, np.where(built_at == t, 2, 3))).astype(np.uint8)
        labels[t] = lab
        img = sig[lab].transpose(2, 0, 1).copy()
        img[:, lab == 1] += speckle[lab == 1]
        img[-1, lab == 1] *= np.float32(1 + 0.2 * season[t])
        img[:, lab == 3] += streets[lab == 3]
        img += rng.normal(0, noise, size=img.shape).astype(np.float32)
        if names:
            img *= np.float32(gains[names[t % len(names)]])
        imagery[t] = img
    y, x = _grid(ny, nx, resolution, 600_000.0, 4_000_000.0 + ny * resolution)
    coords: dict[str, object] = {"time": times, "band": np.asarray(list(bands), dtype=object), "y": y, "x": x}
    if names:
        coords["sensor"] = ("time", np.asarray([names[t % len(names)] for t in range(nt)], dtype=object))
    ds = xr.Dataset(
        {
            "imagery": (("time", "band", "y", "x"), imagery, {"long_name": "surface reflectance"}),
            "labels": (
                ("time", "y", "x"),
                labels,
                {"classes": list(CHANGE_CLASSES), "nodata": LABEL_NODATA, "long_name": "land cover (truth)"},
            ),
        },
        coords=coords,
        attrs={"title": "geoarray change cube (vegetation built over, one direction)", "seed": seed},
    )
    ds = ds.rio.write_crs(crs)
    if chunks:
        ds = ds.chunk({"time": 1, "band": -1, "y": chunks, "x": chunks})
    return ds
