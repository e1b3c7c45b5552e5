"""Cubes with known truth: :func:`synthetic_cube` for tests, :func:`sample_cube` for the demo, :func:`phenology_cube`
(seed 001) and :func:`change_cube` (seed 000) for the self-supervised examples.

Both are deterministic and need no network: the synthetic cube is generated from a seed, and the sample cube
is built on a real Landsat-7 ETM+ scene that ships inside the package (``geoarray/data/L7_ETMs.tif``,
Apache-2.0, see ``geoarray/data/NOTICE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np
import pandas as pd
import xarray as xr

from geoarray._constants import LABEL_NODATA  # the nodata of the labels these cubes carry
from geoarray._synthetic import CHANGE_CLASSES, _grid, _smooth_noise, change_cube

__all__ = [
    "CHANGE_CLASSES",
    "LABEL_NODATA",
    "change_cube",
    "phenology_cube",
    "sample_cube",
    "sample_path",
    "synthetic_cube",
]


def synthetic_cube(
    *,
    size: int | tuple[int, int] = 256,
    n_times: int = 4,
    bands: Sequence[str] = ("blue", "green", "red", "nir"),
    classes: Sequence[str] = ("water", "forest", "field", "urban", "new_building"),
    blob_scale: float = 12.0,
    n_objects: int | None = None,
    noise: float = 0.02,
    cloud_fraction: float = 0.05,
    nan_fraction: float = 0.002,
    start: str = "2021-03-01",
    step_days: int = 45,
    crs: str = "EPSG:32633",
    resolution: float = 10.0,
    seed: int = 0,
    chunks: int | None = None,
) -> xr.Dataset:
    """A deterministic cube with known land-cover truth, change, clouds and NaNs.

    The scene is a mosaic of smooth blobs, one land-cover class each (all ``classes`` but the last). Every
    class has its own spectral signature over ``bands`` and its own texture (ripples, speckle, stripes or a
    street grid), plus a seasonal cycle for vegetated classes. Square objects of the last class
    (``"new_building"``) appear between dates, so change and temporal order are learnable. Clouds (bright,
    ``valid == False``) and NaN pixels (``valid == False``) are scattered over the dates.

    Parameters
    ----------
    size
        Height and width in pixels (an int for a square).
    n_times
        Number of dates.
    bands
        Band names; each gets a distinct reflectance per class.
    classes
        Class names; the last one is the class of the objects that appear over time.
    blob_scale
        Size of land-cover blobs in pixels.
    n_objects
        Number of appearing objects (default: one per ~3000 pixels).
    noise
        Standard deviation of the per-pixel Gaussian noise (reflectance units).
    cloud_fraction, nan_fraction
        Fraction of pixels per date covered by cloud, and set to NaN.
    start, step_days
        Date of the first acquisition and the spacing of dates.
    crs, resolution
        Grid CRS and pixel size (metres).
    seed
        Random seed; the same seed gives the same cube.
    chunks
        If given, the cube is dask-chunked ``(time=1, band=all, y=chunks, x=chunks)``.

    Returns
    -------
    xarray.Dataset
        ``imagery(time, band, y, x)`` float32 reflectance, ``valid(time, y, x)`` bool and
        ``labels(time, y, x)`` uint8 truth with attrs ``classes`` and ``nodata`` (255, never used here since
        the truth is known everywhere).

    Examples
    --------
    >>> ds = synthetic_cube(size=64, n_times=3, seed=1)
    >>> ds.imagery.shape
    (3, 4, 64, 64)
    >>> list(ds.labels.attrs["classes"])
    ['water', 'forest', 'field', 'urban', 'new_building']
    """
    import rioxarray  # noqa: F401  (registers .rio)

    ny, nx = (size, size) if isinstance(size, int) else size
    nb, nc, nt = len(bands), len(classes), n_times
    if nc < 2:
        raise ValueError(f"classes={list(classes)}; expected at least 2 (land cover + the appearing class).")
    rng = np.random.default_rng(seed)
    n_static = nc - 1

    # Land cover: argmax of smooth noise fields gives natural, blobby regions.
    fields = np.stack([_smooth_noise(rng, (ny, nx), blob_scale) for _ in range(n_static)])
    static = np.argmax(fields, axis=0).astype(np.uint8)

    # Spectral signatures, one row per class: redrawn until every pair of classes differs by >= 0.25 (L2),
    # so the truth is learnable from the spectra alone, whatever the band count.
    for _ in range(1000):
        sig = rng.uniform(0.05, 0.75, size=(nc, nb)).astype(np.float32)
        dist = np.linalg.norm(sig[:, None] - sig[None], axis=-1) + np.eye(nc)
        if dist.min() >= 0.25:
            break
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    textures = [
        0.03 * np.sin(xx / 3.0 + yy / 5.0),  # ripples
        0.06 * _smooth_noise(rng, (ny, nx), 1.0),  # speckle (canopy)
        0.05 * np.sign(np.sin(yy / 2.5)),  # stripes (fields)
        0.06 * ((xx % 8 < 2) | (yy % 8 < 2)),  # street grid
    ]

    # Appearing objects: squares of the last class, each with an appearance date index >= 1.
    n_obj = max(1, (ny * nx) // 3000) if n_objects is None else n_objects
    appear = np.full((ny, nx), nt, dtype=np.int64)  # nt means "never"
    for _ in range(n_obj):
        s = int(rng.integers(6, 14))
        y0, x0 = int(rng.integers(0, max(1, ny - s))), int(rng.integers(0, max(1, nx - s)))
        t0 = int(rng.integers(1, max(2, nt)))
        appear[y0 : y0 + s, x0 : x0 + s] = np.minimum(appear[y0 : y0 + s, x0 : x0 + s], t0)

    times = pd.date_range(start, periods=nt, freq=f"{step_days}D").values
    season = np.cos(2 * np.pi * (pd.DatetimeIndex(times).dayofyear.values - 200) / 365.25)
    imagery = np.empty((nt, nb, ny, nx), dtype=np.float32)
    labels = np.empty((nt, ny, nx), dtype=np.uint8)
    valid = np.ones((nt, ny, nx), dtype=bool)
    for t in range(nt):
        lab = np.where(appear <= t, np.uint8(nc - 1), static)
        labels[t] = lab
        img = sig[lab].transpose(2, 0, 1).copy()  # (band, y, x)
        for c in range(n_static):
            m = static == c
            img[:, m] += textures[c % len(textures)][m]
            if c in (1, 2):  # vegetated classes follow the season, mostly in the last bands
                img[-1, m] *= np.float32(1 + 0.15 * season[t])
        img += rng.normal(0, noise, size=img.shape).astype(np.float32)
        if cloud_fraction > 0:
            field = _smooth_noise(rng, (ny, nx), blob_scale * 1.5)
            cloud = field > np.quantile(field, 1 - cloud_fraction)
            img[:, cloud] = np.float32(0.9)
            valid[t, cloud] = False
        if nan_fraction > 0:
            holes = rng.random((ny, nx)) < nan_fraction
            img[:, holes] = np.nan
            valid[t, holes] = False
        imagery[t] = img

    y, x = _grid(ny, nx, resolution, 500_000.0, 5_000_000.0 + ny * resolution)
    ds = xr.Dataset(
        {
            "imagery": (("time", "band", "y", "x"), imagery, {"long_name": "surface reflectance"}),
            "valid": (("time", "y", "x"), valid),
            "labels": (
                ("time", "y", "x"),
                labels,
                {"classes": list(classes), "nodata": LABEL_NODATA, "long_name": "land cover (truth)"},
            ),
        },
        coords={"time": times, "band": np.asarray(list(bands), dtype=object), "y": y, "x": x},
        attrs={"title": "geoarray synthetic cube", "seed": seed},
    )
    ds = ds.rio.write_crs(crs)
    if chunks:
        ds = ds.chunk({"time": 1, "band": -1, "y": chunks, "x": chunks})
    return ds


def phenology_cube(
    *,
    size: int | tuple[int, int] = 128,
    n_times: int = 24,
    classes: Sequence[str] | None = None,
    parcel_size: float = 12.0,
    cloud_cover: float = 0.3,
    noise: float = 0.01,
    start: str = "2021-01-01",
    crs: str = "EPSG:32631",
    resolution: float = 10.0,
    seed: int = 0,
    chunks: int | None = None,
) -> xr.Dataset:
    """A year of Sentinel-2-like pixel time series whose land-cover classes differ by phenology (seed 001).

    Synthetic, with known truth. The scene is a patchwork of parcels (jittered Voronoi cells), one class each:
    ``water``, ``urban``, ``evergreen_forest``, ``deciduous_forest``, ``grassland``, ``summer_crop``,
    ``winter_crop`` and ``double_crop``. A class is a vegetation-fraction curve over the year (green-up,
    senescence, one or two seasons) mixed linearly with a soil, built or water spectrum over six bands
    (``blue, green, red, nir, swir1, swir2``). Within a class every parcel, and smoothly every pixel, draws
    its own green-up date (sd ~13 days), season length, amplitude, soil brightness and moisture, so a pixel's
    series carries more than its class. Dates are irregular (about every 365 / ``n_times`` days, jittered).
    Clouds cover a different fraction of the scene on each date (some clear, some mostly cloudy, mean about
    ``cloud_cover``): bright, and ``valid == False``.

    Parameters
    ----------
    size
        Height and width in pixels (an int for a square).
    n_times
        Dates in the year.
    classes
        A subset of the class names above, in label order (default: all eight).
    parcel_size
        Typical parcel width in pixels.
    cloud_cover
        Mean fraction of a date's pixels under cloud (0 for none).
    noise
        Per-observation Gaussian noise (reflectance units).
    start, crs, resolution, seed
        First day of the year covered, grid CRS, pixel size (metres) and the random seed.
    chunks
        If given, the cube is dask-chunked ``(time=1, band=all, y=chunks, x=chunks)``.

    Returns
    -------
    xarray.Dataset
        ``imagery(time, band, y, x)`` float32 reflectance, ``valid(time, y, x)`` bool, ``labels(y, x)`` uint8
        with attrs ``classes`` and ``nodata``.

    Examples
    --------
    >>> ds = phenology_cube(size=32, n_times=12, seed=1)
    >>> ds.imagery.shape
    (12, 6, 32, 32)
    >>> ds.labels.attrs["classes"][:3]
    ['water', 'urban', 'evergreen_forest']
    """
    import rioxarray  # noqa: F401  (registers .rio)

    from geoarray import _phenology as ph
    from geoarray.errors import CubeError

    names = list(ph.CLASSES) if classes is None else list(classes)
    unknown = [c for c in names if c not in ph.CLASSES]
    if unknown or len(names) < 2:
        raise CubeError(
            f"classes={names}; expected at least 2 of {list(ph.CLASSES)} (unknown: {unknown})."
        )
    if not 0 <= cloud_cover < 1:
        raise CubeError(f"cloud_cover={cloud_cover!r}; expected a fraction in [0, 1), e.g. 0.3.")
    if not 1 <= n_times <= 365:
        raise CubeError(f"n_times={n_times}; expected 1 to 365 dates in the year (distinct days).")
    ny, nx = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    step = 365.0 / n_times
    offsets = np.clip(np.round(step * (np.arange(n_times) + 0.5) + rng.uniform(-0.3, 0.3, n_times) * step), 0, 364)
    times = (pd.Timestamp(start) + pd.to_timedelta(np.unique(offsets), unit="D")).values
    if len(times) != n_times:
        raise CubeError(f"n_times={n_times}; expected 1 to 365 dates in the year (distinct days).")
    doy = pd.DatetimeIndex(times).dayofyear.values.astype(np.float32)
    img, valid, labels = ph.generate(
        ny, nx, doy, names, parcel_size=parcel_size, cloud_cover=cloud_cover, noise=noise, rng=rng
    )
    y, x = _grid(ny, nx, resolution, 600_000.0, 5_400_000.0 + ny * resolution)
    ds = xr.Dataset(
        {
            "imagery": (("time", "band", "y", "x"), img, {"long_name": "surface reflectance"}),
            "valid": (("time", "y", "x"), valid),
            "labels": (
                ("y", "x"),
                labels,
                {"classes": names, "nodata": LABEL_NODATA, "long_name": "land cover (truth)"},
            ),
        },
        coords={"time": times, "band": np.asarray(ph.BANDS, dtype=object), "y": y, "x": x},
        attrs={"title": "geoarray synthetic phenology cube (seed 001)", "seed": seed},
    )
    ds = ds.rio.write_crs(crs)
    if chunks:
        ds = ds.chunk({"time": 1, "band": -1, "y": chunks, "x": chunks})
    return ds


# ------------------------------------------------------------------------------------------------------
# The embedded sample (real Landsat-7 + planted truth)
# ------------------------------------------------------------------------------------------------------
SAMPLE_BANDS = ("B1", "B2", "B3", "B4", "B5", "B7")
SAMPLE_CLASSES = ("water", "vegetation", "built", "new_construction")


def sample_path() -> str:
    """Path of the real Landsat-7 ETM+ GeoTIFF that ships with geoarray (352 x 349 px, 6 bands, uint8)."""
    return str(resources.files("geoarray") / "data" / "L7_ETMs.tif")


def sample_cube(*, n_times: int = 4, seed: int = 0) -> xr.Dataset:
    """The demo cube: a short time series built around a real Landsat-7 ETM+ scene.

    What is real
        The pixels of the first date: Landsat-7 ETM+ bands 1, 2, 3, 4, 5 and 7 over Olinda, Brazil
        (EPSG:31985, 28.5 m, 352 x 349 px, uint8 DN) from the ``stars`` package, Apache-2.0. The grid and CRS
        are the file's own.
    What is derived
        ``labels`` for ``water``, ``vegetation`` and ``built`` come from spectral indices of the real pixels
        (NDWI > 0.2 is water, else NDVI > 0.25 is vegetation, else built), so they agree with the imagery
        but are not surveyed ground truth.
    What is planted
        The dates (the file has none; ``n_times`` dates 60 days apart from 2000-01-15); a seasonal cycle
        of the near/short-wave infrared over vegetation; rectangles of ``new_construction`` (bright,
        concrete-like spectra) that appear from the second date on, whose truth is exact; clouds at one date
        (saturated DN, ``valid == False``).

    Returns
    -------
    xarray.Dataset
        ``imagery(time, band, y, x)`` uint8, ``valid(time, y, x)``, ``labels(time, y, x)`` uint8 with attrs
        ``classes`` and ``nodata``. About 3 MB in memory.

    Examples
    --------
    >>> ds = sample_cube()
    >>> ds.imagery.shape
    (4, 6, 352, 349)
    >>> ds.rio.crs.to_epsg()
    31985
    """
    import rioxarray

    real = rioxarray.open_rasterio(sample_path())
    assert isinstance(real, xr.DataArray)  # one plain GeoTIFF, not user input
    img0 = np.asarray(real.values, dtype=np.float32)  # (band, y, x)
    _b, g, r, n, _s1, _s2 = img0
    ndvi = (n - r) / (n + r + 1e-6)
    ndwi = (g - n) / (g + n + 1e-6)
    base = np.full(ndvi.shape, 2, dtype=np.uint8)
    base[ndvi > 0.25] = 1
    base[ndwi > 0.2] = 0
    veg = base == 1

    rng = np.random.default_rng(seed)
    ny, nx = base.shape
    appear = np.full((ny, nx), n_times, dtype=np.int64)
    land = np.argwhere(base != 0)
    for _ in range(14):
        cy, cx = land[rng.integers(len(land))]
        h, w = int(rng.integers(6, 14)), int(rng.integers(6, 14))
        y0, x0 = max(0, cy - h // 2), max(0, cx - w // 2)
        t0 = int(rng.integers(1, max(2, n_times)))
        appear[y0 : y0 + h, x0 : x0 + w] = np.minimum(appear[y0 : y0 + h, x0 : x0 + w], t0)
    concrete = np.array([150, 140, 150, 120, 160, 150], dtype=np.float32)  # DN, bright and flat

    times = pd.date_range("2000-01-15", periods=n_times, freq="60D").values
    doy = pd.DatetimeIndex(times).dayofyear.values
    imagery = np.empty((n_times, 6, ny, nx), dtype=np.uint8)
    labels = np.empty((n_times, ny, nx), dtype=np.uint8)
    valid = np.ones((n_times, ny, nx), dtype=bool)
    for t in range(n_times):
        img = img0.copy()
        if t > 0:
            f = 1 + 0.2 * np.sin(2 * np.pi * (doy[t] - doy[0]) / 365.25)
            img[3, veg] *= f  # NIR follows the green-up
            img[4, veg] *= 2 - f  # SWIR moves the other way (leaf water)
            img += rng.normal(0, 1.5, size=img.shape).astype(np.float32)
        new = appear <= t
        img[:, new] = concrete[:, None] + rng.normal(0, 6, size=(6, int(new.sum()))).astype(np.float32)
        lab = np.where(new, np.uint8(3), base)
        if t == 1:
            cloud = _smooth_noise(rng, (ny, nx), 10.0) > 1.6
            img[:, cloud] = 255
            valid[t, cloud] = False
        imagery[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
        labels[t] = lab

    ds = xr.Dataset(
        {
            "imagery": (("time", "band", "y", "x"), imagery, {"long_name": "Landsat-7 ETM+ DN"}),
            "valid": (("time", "y", "x"), valid),
            "labels": (
                ("time", "y", "x"),
                labels,
                {"classes": list(SAMPLE_CLASSES), "nodata": LABEL_NODATA, "long_name": "land cover"},
            ),
        },
        coords={
            "time": times,
            "band": np.asarray(SAMPLE_BANDS, dtype=object),
            "y": real.y.values,
            "x": real.x.values,
            "sensor": ("time", np.asarray(["L7"] * n_times, dtype=object)),
        },
        attrs={
            "title": "geoarray sample cube (real Landsat-7 ETM+ first date, planted change)",
            "source": "stars package L7_ETMs.tif, Apache-2.0, (c) 2016-2018 E. Pebesma, M. Sumner, E. Racine, A. Fantini",
        },
    )
    return ds.rio.write_crs(real.rio.crs)
