"""The pixel time-series cube of seed 001 (BTFM): land-cover classes told apart by their phenology.

:func:`geoarray.datasets.phenology_cube` is the public entry; this module holds the generator. Each class is a
vegetation-fraction curve over the year (a double logistic: green-up, senescence, one or two seasons), mixed
linearly with a soil, water or built spectrum. Every parcel and every pixel draws its own green-up date,
season length, amplitude, soil brightness and moisture, so the series vary continuously within a class (what an
encoder has to represent beyond the class), and clouds hide a different part of the scene on each date.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
#: name -> (kind, base fraction, peak fraction, seasons as (green-up doy, senescence doy), slope in days)
CLASSES: dict[str, tuple[str, float, float, tuple[tuple[float, float], ...], float]] = {
    "water": ("water", 0.0, 0.0, (), 10.0),
    "urban": ("built", 0.05, 0.15, ((120, 260),), 20.0),
    "evergreen_forest": ("veg", 0.7, 0.85, ((100, 300),), 25.0),
    "deciduous_forest": ("veg", 0.2, 0.9, ((115, 290),), 10.0),
    "grassland": ("veg", 0.2, 0.6, ((75, 195),), 15.0),
    "summer_crop": ("veg", 0.05, 0.9, ((160, 250),), 7.0),
    "winter_crop": ("veg", 0.1, 0.85, ((45, 175),), 8.0),
    "double_crop": ("veg", 0.05, 0.8, ((50, 130), (185, 265)), 6.0),
}
#: reflectance endmembers over BANDS
VEG = np.array([0.03, 0.07, 0.04, 0.45, 0.22, 0.10], dtype=np.float32)
SOIL = np.array([0.10, 0.14, 0.19, 0.25, 0.33, 0.28], dtype=np.float32)
WATER = np.array([0.07, 0.06, 0.04, 0.02, 0.01, 0.005], dtype=np.float32)
BUILT = np.array([0.14, 0.16, 0.18, 0.22, 0.26, 0.24], dtype=np.float32)


def smooth(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise (FFT) with blobs of about ``scale`` pixels."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    out = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (np.pi * scale) ** 2 * (fy**2 + fx**2))))
    return (out - out.mean()) / (out.std() + 1e-12)


def parcels(rng: np.random.Generator, ny: int, nx: int, size: float) -> np.ndarray:
    """``(ny, nx)`` parcel ids: the nearest of random seeds (Voronoi cells of about ``size`` pixels across),
    with a jittered boundary so the parcels are not straight-edged polygons."""
    n = max(2, int(ny * nx / size**2))
    sy, sx = rng.uniform(0, ny, n), rng.uniform(0, nx, n)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    yy += 1.5 * smooth(rng, (ny, nx), 3.0).astype(np.float32)
    xx += 1.5 * smooth(rng, (ny, nx), 3.0).astype(np.float32)
    best = np.full((ny, nx), np.inf, dtype=np.float32)
    ids = np.zeros((ny, nx), dtype=np.int64)
    for i in range(n):
        d = (yy - sy[i]) ** 2 + (xx - sx[i]) ** 2
        closer = d < best
        best[closer], ids[closer] = d[closer], i
    return ids


def fraction(
    doy: np.ndarray,
    base: np.ndarray,
    peak: np.ndarray,
    seasons: Sequence[tuple[np.ndarray, np.ndarray]],
    slope: np.ndarray,
) -> np.ndarray:
    """Vegetation fraction ``(T, P)`` at days ``doy (T,)`` for pixels with per-pixel parameters ``(P,)``: a
    double logistic per season (up at green-up, down at senescence), the seasons' maximum."""
    f = np.zeros((len(doy), len(base)), dtype=np.float32)
    d = doy[:, None].astype(np.float32)
    for up, down in seasons:
        s = 1 / (1 + np.exp(-(d - up) / slope)) - 1 / (1 + np.exp(-(d - down) / slope))
        f = np.maximum(f, s)
    return base + (peak - base) * np.clip(f, 0, 1)


def generate(
    ny: int,
    nx: int,
    doy: np.ndarray,
    classes: Sequence[str],
    *,
    parcel_size: float,
    cloud_cover: float,
    noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``imagery (T, 6, ny, nx)`` float32, ``valid (T, ny, nx)`` bool and ``labels (ny, nx)`` uint8."""
    nt, p = len(doy), ny * nx
    pid = parcels(rng, ny, nx, parcel_size)
    labels = rng.integers(0, len(classes), pid.max() + 1)[pid].astype(np.uint8)
    npar = int(pid.max()) + 1

    def per_parcel(sd: float) -> np.ndarray:
        return rng.normal(0, sd, npar)[pid].ravel().astype(np.float32)

    def per_pixel(sd: float, scale: float = 2.0) -> np.ndarray:
        return (sd * smooth(rng, (ny, nx), scale)).ravel().astype(np.float32)

    # what varies within a class: each parcel's calendar and vigour, plus smooth per-pixel departures
    shift = per_parcel(12.0) + per_pixel(4.0)  # green-up date, days
    length = per_parcel(10.0) + per_pixel(3.0)  # season length change, days
    vigour = np.clip(1 + per_parcel(0.12) + per_pixel(0.05), 0.5, 1.4)  # amplitude factor
    soil = np.clip(1 + per_parcel(0.15) + per_pixel(0.08, 6.0), 0.5, 1.6)  # soil brightness
    moist = np.clip(1 + per_parcel(0.1) + per_pixel(0.05, 6.0), 0.6, 1.4)  # short-wave infrared factor
    lab = labels.ravel()
    flat = np.empty((nt, len(BANDS), p), dtype=np.float32)
    for k, name in enumerate(classes):
        m = lab == k
        if not m.any():
            continue
        kind, base, peak, seasons, slope = CLASSES[name]
        n = int(m.sum())
        ss = [(up + shift[m], down + shift[m] + length[m]) for up, down in seasons]
        fv = fraction(
            doy,
            np.full(n, base, np.float32),
            np.minimum(peak * vigour[m], 1.0),
            ss,
            np.full(n, slope, np.float32),
        )
        if kind == "water":
            turbid = np.clip(soil[m] - 1, -0.3, 0.6)  # sediment brightens the visible bands
            refl = (
                WATER[:, None] * (1 + turbid) + 0.04 * np.clip(turbid, 0, None) * (np.arange(6) < 3)[:, None]
            )
            spec = np.broadcast_to(refl, (nt, len(BANDS), n))
        else:
            back = (BUILT if kind == "built" else SOIL)[:, None] * soil[m]
            spec = fv[:, None, :] * VEG[None, :, None] + (1 - fv[:, None, :]) * back[None]
        spec = np.array(spec, dtype=np.float32)
        spec[:, 4:] *= moist[m]
        flat[..., m] = spec
    flat += rng.normal(0, noise, flat.shape).astype(np.float32)
    img = flat.reshape(nt, len(BANDS), ny, nx)

    valid = np.ones((nt, ny, nx), dtype=bool)
    if cloud_cover > 0:  # some dates clear, some mostly cloudy: a cover fraction per date around cloud_cover
        covers = np.clip(rng.beta(0.7, 0.7 * (1 - cloud_cover) / cloud_cover, nt), 0, 0.95)
        for t in range(nt):
            if covers[t] < 0.01:
                continue
            field = smooth(rng, (ny, nx), 8.0)
            cloud = field > np.quantile(field, 1 - covers[t])
            bright = 0.55 + 0.2 * smooth(rng, (ny, nx), 4.0)[cloud]
            img[t, :, cloud] = (bright[:, None] + rng.normal(0, 0.02, (int(cloud.sum()), 6))).astype(
                np.float32
            )
            valid[t, cloud] = False
    return img, valid, labels
