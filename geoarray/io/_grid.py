"""The pixel grid GeoTIFFs are read onto: its transform from cube coordinates, the footprint of a warped file,
and the overlap check. Private: used by :mod:`geoarray.io.geotiff`."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from geoarray.cube import check_regular
from geoarray.errors import CRSError, NoOverlapError, RasterError

_LOCAL = threading.local()


class Grid:
    """The target pixel grid: CRS, affine transform and shape."""

    def __init__(self, crs: Any, transform: Any, height: int, width: int) -> None:
        self.crs, self.transform, self.height, self.width = crs, transform, height, width

    def same(self, src: Any) -> bool:
        return (
            src.crs == self.crs
            and (src.height, src.width) == (self.height, self.width)
            and src.transform.almost_equals(self.transform, precision=1e-9 * max(1.0, abs(self.transform.a)))
        )

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north), also for a south-up or east-to-west grid (rasterio's array_bounds
        then gives south > north or west > east, which would pass for an empty box)."""
        x0, y0, x1, y1 = array_bounds(self.height, self.width, self.transform)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def vrt(self, src: Any, resampling: Resampling, nodata: Any = None, src_nodata: Any = None) -> WarpedVRT:
        kw: dict[str, Any] = {}
        if nodata is not None:
            kw["nodata"] = nodata
        if src_nodata is not None:
            kw["src_nodata"] = src_nodata
        return WarpedVRT(
            src,
            crs=self.crs,
            transform=self.transform,
            height=self.height,
            width=self.width,
            resampling=resampling,
            **kw,
        )


def grid_of(like: xr.Dataset | xr.DataArray) -> Grid:
    crs = like.rio.crs
    if crs is None:
        raise CRSError(
            "`like` has no CRS; expected a cube with a `spatial_ref` coordinate (see validate_cube)."
        )
    return Grid(crs, transform_of(like, "like"), like.sizes["y"], like.sizes["x"])


def transform_of(obj: xr.Dataset | xr.DataArray, what: str) -> Affine:
    """The affine transform of pixel-centre ``y``/``x`` coordinates, refusing grids that have none."""
    for dim in ("y", "x"):
        if dim not in obj.dims or dim not in obj.coords:
            raise RasterError(
                f"{what} has no {dim!r} coordinate (dims {tuple(map(str, obj.dims))}); expected pixel-centre "
                "y/x coordinates in the CRS, as a cube has."
            )
        if obj.sizes[dim] == 0:
            raise RasterError(
                f"{what} has no pixels (sizes {dict(obj.sizes)}); expected at least one along y and x. "
                "Check the selection that made it (e.g. `sel(y=slice(north, south))` when y descends)."
            )
        check_regular(obj[dim].values, dim)
    cached = obj.rio.transform()  # the GeoTransform attr of spatial_ref, if any: the only source for 1 pixel
    xs, ys = np.asarray(obj["x"].values, np.float64), np.asarray(obj["y"].values, np.float64)
    res: list[float] = []
    for dim, c, fallback in (("x", xs, cached.a), ("y", ys, cached.e)):
        if c.size > 1:
            res.append(float((c[-1] - c[0]) / (c.size - 1)))
        elif not cached.is_identity and fallback:
            res.append(float(fallback))
        else:
            raise RasterError(
                f"{what} is 1 pixel along {dim!r}, so its pixel size is unknown; expected at least 2 pixels, "
                "or a transform recorded with `.rio.write_transform(transform)`."
            )
    return Affine(res[0], 0.0, xs[0] - res[0] / 2, 0.0, res[1], ys[0] - res[1] / 2)


def check_overlap(grid: Grid, first: Path, src: Grid, path: Path) -> None:
    """Refuse a file (``path`` on grid ``src``) that does not overlap the grid of the ``first`` file at all."""
    sb = src.bounds
    try:
        b = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    except Exception:  # a grid that cannot be expressed in the other CRS does not overlap it
        b = (np.inf, np.inf, -np.inf, -np.inf)
    if b[0] >= sb[2] or b[2] <= sb[0] or b[1] >= sb[3] or b[3] <= sb[1]:
        raise NoOverlapError(
            f"{path.name!r} (bounds {tuple(round(v, 4) for v in sb)} in {src.crs}) does not overlap "
            f"the grid of the first file {first.name!r} (bounds {tuple(round(v, 4) for v in grid.bounds)} in "
            f"{grid.crs}), onto which every file is warped; it would give a date of fill values only. Expected "
            "files of one area: check the paths, or build one cube per area."
        )


def footprint(grid: Grid, src: Grid, ys: np.ndarray, xs: np.ndarray, chunk: int) -> xr.DataArray | None:
    """(y, x): True outside the area a file on grid ``src`` covers once warped onto ``grid`` (pixel centres
    ``ys``, ``xs``), or None when it covers the whole grid.

    A file without nodata is warped with 0 outside its footprint, which would pass for data; the footprint
    is computed from the pixel centres (lazily, one dask block per chunk), not from the values.
    """
    inner = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    sb = src.bounds
    tol = 1e-9 * max(abs(v) for v in sb) + 1e-9
    rotated = src.transform.b != 0 or src.transform.d != 0  # then bounds are a box around the raster
    if (
        not rotated
        and inner[0] >= sb[0] - tol
        and inner[1] >= sb[1] - tol
        and inner[2] <= sb[2] + tol
        and inner[3] <= sb[3] + tol
    ):
        return None
    fn = functools.partial(
        _outside_block,
        dst=grid.crs.to_wkt(),
        src=src.crs.to_wkt(),
        inv=tuple((~src.transform)[:6]),
        height=src.height,
        width=src.width,
    )
    y = dsa.from_array(np.asarray(ys), chunks=chunk)
    x = dsa.from_array(np.asarray(xs), chunks=chunk)
    out = dsa.blockwise(fn, "ij", y, "i", x, "j", dtype=bool)
    return xr.DataArray(out, dims=("y", "x"))


def _outside_block(
    ys: np.ndarray, xs: np.ndarray, *, dst: str, src: str, inv: tuple[float, ...], height: int, width: int
) -> np.ndarray:
    """True where a target pixel centre falls outside the source raster (one dask block)."""
    gx, gy = np.meshgrid(xs, ys)
    if dst != src:
        gx, gy = _transformer(dst, src).transform(gx, gy)
    a, b, c, d, e, f = inv
    col, row = a * gx + b * gy + c, d * gx + e * gy + f
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return np.asarray(~inside)


def _transformer(dst: str, src: str) -> Any:
    """A pyproj Transformer cached per thread (they are not safe to share between threads)."""
    from pyproj import Transformer

    cache = _LOCAL.__dict__.setdefault("transformers", {})
    if (dst, src) not in cache:
        cache[(dst, src)] = Transformer.from_crs(dst, src, always_xy=True)
    return cache[(dst, src)]


def dataset_mask(
    path: Path, grid: Grid, *, warp: bool, alpha: bool, shape: tuple[int, int], chunk: int
) -> xr.DataArray:
    """(y, x): True where GDAL's per-dataset mask of the file at ``path`` (an internal/.msk mask or an alpha
    band) marks fill, read lazily one window per dask block. With ``warp``, the mask is warped onto ``grid``
    too (through an alpha band), so it is also True outside the file's footprint."""
    fn = functools.partial(
        _mask_block,
        path=str(path),
        warp=(grid.crs.to_wkt(), tuple(grid.transform)[:6], grid.height, grid.width) if warp else None,
        alpha=alpha,
    )
    rows = dsa.arange(shape[0], chunks=chunk)
    cols = dsa.arange(shape[1], chunks=chunk)
    out = dsa.blockwise(fn, "ij", rows, "i", cols, "j", dtype=bool)
    return xr.DataArray(out, dims=("y", "x"))


def _mask_block(rows: np.ndarray, cols: np.ndarray, *, path: str, warp: Any, alpha: bool) -> np.ndarray:
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window

    win = Window(int(cols[0]), int(rows[0]), len(cols), len(rows))
    with rasterio.open(path) as src:
        if warp is None and not alpha:
            return np.asarray(src.read_masks(1, window=win) == 0)
        if warp is None:  # the alpha band itself: GDAL's masks follow a nodata tag instead when there is one
            return np.asarray(src.read(list(src.colorinterp).index(ColorInterp.alpha) + 1, window=win) == 0)
        crs, tr, height, width = warp
        # a source alpha band is kept by the warper; a mask without one needs an alpha band added, and no
        # source nodata, or the warper's validity would follow a nodata tag instead of the mask
        kw: dict[str, Any] = {} if alpha else {"add_alpha": True, "src_nodata": None}
        with WarpedVRT(src, crs=crs, transform=Affine(*tr), height=height, width=width, **kw) as vrt:
            # read the alpha band itself: a warped VRT's band masks ignore it
            k = list(vrt.colorinterp).index(ColorInterp.alpha) + 1
            return np.asarray(vrt.read(k, window=win) == 0)
