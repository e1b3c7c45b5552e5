"""Label rasters onto a cube's grid (:func:`read_labels`) and outputs out as COGs (:func:`export_geotiff`).

:mod:`geoarray.io.geotiff` re-exports both beside :func:`~geoarray.io.geotiff.from_geotiff`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds

from geoarray._atomic import atomic_write, check_file_path
from geoarray._constants import DEFAULT_CHUNK, LABEL_NODATA
from geoarray._preprocess import date_hits
from geoarray.errors import CRSError, NoOverlapError, RasterError
from geoarray.io._files import (
    PathLike,
    fmt_time,
    open_checked,
    open_da,
)
from geoarray.io._grid import grid_of, transform_of

__all__ = ["export_geotiff", "read_labels", "select_time"]

log = logging.getLogger(__name__)


def select_time(da: xr.DataArray, when: str | int | None = None) -> xr.DataArray:
    """One date of a variable, for :func:`export_geotiff` (what ``geoarray export --time`` does).

    Parameters
    ----------
    da
        A variable of a cube.
    when
        An index (negative counts from the end; a string of digits is an index too), a date
        (``"2021-05-01"`` matches any time on that day), or a full timestamp. None is allowed when ``da``
        has a single date. A variable without ``time`` is returned as it is, whatever ``when`` says.

    Returns
    -------
    xarray.DataArray
        ``da`` with a ``time`` dim of length 1 (or without ``time`` if it had none).

    Raises
    ------
    RasterError
        Several dates and no ``when``, an index out of range, a date the variable does not have, or a day
        that matches several dates.

    Examples
    --------
    >>> from geoarray.datasets import synthetic_cube
    >>> select_time(synthetic_cube(size=32, n_times=3).imagery, "-1").sizes["time"]
    1
    """
    if "time" not in da.dims:
        return da
    times = pd.DatetimeIndex(da["time"].values)
    shown = [fmt_time(t) for t in times]
    name = da.name if da.name is not None else "the variable"
    if when is None:
        if times.size == 1:
            return da
        raise RasterError(
            f"{name!r} has {times.size} dates {shown}; a GeoTIFF holds one. Choose one: pass --time with a "
            "date or index (e.g. --time 2021-05-01, --time 0); in code `select_time(da, 0)`."
        )
    text = str(when).strip()
    is_int = isinstance(when, (int, np.integer)) and not isinstance(when, (bool, np.bool_))
    if is_int or re.fullmatch(r"-?\d{1,4}", text):  # 8 digits are a date (20210501), not an index
        i = int(text)
        if not -times.size <= i < times.size:
            raise RasterError(
                f"time index {i} is out of range for {name!r}, which has {times.size} dates {shown}; expected "
                f"{-times.size}..{times.size - 1}."
            )
        return da.isel(time=[i])
    try:
        t = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise RasterError(
            f"time {when!r} is neither a date (YYYY-MM-DD) nor an index; {name!r} has dates {shown}."
        ) from None
    hits = date_hits(times, t)
    if hits.size == 0:
        raise RasterError(f"{name!r} has no date {text!r}; it has {shown}. Pass one of them or an index.")
    if hits.size > 1:
        raise RasterError(
            f"{text!r} matches {hits.size} dates of {name!r}: {[shown[k] for k in hits]}; pass the full "
            f"timestamp or an index ({', '.join(map(str, hits))})."
        )
    return da.isel(time=[int(hits[0])])


def read_labels(
    path: PathLike,
    like: xr.Dataset | xr.DataArray,
    *,
    classes: Sequence[str] | None = None,
    nodata: int | None = None,
) -> xr.DataArray:
    """Read a single-band integer label raster onto a cube's grid (``rio clip --like``, in code).

    The raster is clipped to the cube's extent and warped onto its grid with nearest-neighbour resampling,
    reprojecting when the CRSs differ. Pixels outside the raster's extent get ``nodata``.

    Parameters
    ----------
    path
        The label GeoTIFF: one band of integer class ids.
    like
        The cube (or any DataArray with ``y``/``x`` and a CRS) whose grid the labels take.
    classes
        Class names, indexed by class id. When omitted: ``["0", "1", ..., str(max id)]``.
    nodata
        The label value meaning "no label". Default: the raster's nodata, else 255 (or -1 for signed types).

    Returns
    -------
    xarray.DataArray
        ``labels(y, x)`` on ``like``'s coordinates, with attrs ``classes`` and ``nodata``; lazy, but the ids
        are checked in one pass over the warped raster here (a label map is one band: about a tenth of a
        10-band date of the cube), and writing the result reads it again.

    Raises
    ------
    RasterError
        Not a single-band integer raster; a negative id other than ``nodata``; an id beyond ``classes``.
    NoOverlapError
        The raster does not overlap the cube at all.

    Examples
    --------
    >>> import geoarray  # doctest: +SKIP
    >>> ds["labels"] = geoarray.read_labels("mask.tif", ds)  # doctest: +SKIP
    """
    grid = grid_of(like)
    p = Path(path)
    with open_checked(p) as src:
        if src.count != 1:
            raise RasterError(
                f"{str(p)!r} has {src.count} bands; expected a single-band label raster. "
                "Extract the label band first (e.g. `gdal_translate -b 1`)."
            )
        dt = np.dtype(src.dtypes[0])
        if not np.issubdtype(dt, np.integer):
            raise RasterError(
                f"{str(p)!r} holds {dt} values; expected integer class ids. "
                "Convert it, e.g. `gdal_translate -ot Byte in.tif out.tif`."
            )
        if src.crs is None:
            raise CRSError(f"{str(p)!r} has no CRS; expected a georeferenced label raster.")
        cube_bounds = like.rio.bounds(recalc=True)
        in_src = transform_bounds(grid.crs, src.crs, *cube_bounds)
        b = src.bounds
        if in_src[0] >= b.right or in_src[2] <= b.left or in_src[1] >= b.top or in_src[3] <= b.bottom:
            raise NoOverlapError(
                f"the label raster {str(p)!r} (bounds {tuple(round(v, 2) for v in b)} in {src.crs}) does not "
                f"overlap the cube (bounds {tuple(round(v, 2) for v in in_src)} in the same CRS). "
                "Expected labels covering at least part of the cube; check that both describe the same area."
            )
        fill = nodata if nodata is not None else src.nodata
        if fill is None:
            fill = -1 if np.issubdtype(dt, np.signedinteger) else min(LABEL_NODATA, int(np.iinfo(dt).max))
        fill = int(fill)
        with grid.vrt(src, Resampling.nearest, nodata=fill) as vrt:
            da = open_da(vrt, chunks={"y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK})
    lab = da.isel(band=0, drop=True).drop_vars("spatial_ref", errors="ignore")
    lab = lab.assign_coords(y=like["y"].values, x=like["x"].values)
    lo, hi = _id_range(lab, fill)
    where = f"{str(p)!r} (nodata {fill}, read onto the cube's grid)"
    if lo is not None and lo < 0:
        raise RasterError(
            f"{where} holds the negative class id {lo}; expected ids 0, 1, ... . If {lo} means 'no label', "
            "pass it as the nodata (read_labels' nodata argument, --label-nodata in the CLI)."
        )
    if classes is None:
        classes = [str(i) for i in range(hi + 1)] if hi is not None else []
    elif hi is not None and hi >= len(classes):
        raise RasterError(
            f"{where} holds class id {hi}, but classes names only {len(classes)}: {list(classes)} (ids 0.."
            f"{len(classes) - 1}). Name every class up to id {hi} in classes (--classes), or if {hi} means "
            "'no label', pass it as the nodata (read_labels' nodata argument, --label-nodata in the CLI)."
        )
    lab.attrs = {"classes": list(classes), "nodata": fill, "long_name": "labels", "source": str(p)}
    lab.name = "labels"
    return lab.rio.write_crs(grid.crs)


def _id_range(lab: xr.DataArray, fill: int) -> tuple[int | None, int | None]:
    """Smallest and largest id that is not ``fill``, in one pass over the warped raster (None, None if none)."""
    import dask
    import dask.array as dsa

    info = np.iinfo(lab.dtype)
    held = lab.data != fill
    lo, hi = dask.compute(
        dsa.where(held, lab.data, info.max).min(),
        dsa.where(held, lab.data, info.min).max(),
        scheduler="threads",
    )
    if lo == info.max and hi == info.min:  # both only when no pixel is held
        return None, None
    return int(lo), int(hi)


def export_geotiff(
    da: xr.DataArray,
    path: PathLike,
    *,
    nodata: float | None = None,
    compress: str = "deflate",
) -> Path:
    """Write a 2-D ``(y, x)`` or 3-D ``(dim, y, x)`` variable as a Cloud-Optimized GeoTIFF.

    The CRS and transform come from the variable's ``spatial_ref`` and coordinates; the names along the
    first dim (classes, features, bands) become band descriptions. Overviews (made by GDAL for rasters larger
    than a 512 px tile) are resampled by nearest neighbour for integer and bool variables (class ids stay
    class ids) and by averaging for floats (probabilities stay in [0, 1]). The file is written to a temporary
    name and renamed, so a failed export never leaves a partial file.

    Parameters
    ----------
    da
        The variable, e.g. ``ds.mask.isel(time=0)`` or ``ds.probabilities.sel(time="2021-05-01")``. A ``time``
        dim of length 1 is dropped.
    path
        Output path, ending ``.tif`` or ``.tiff`` (missing folders are made).
    nodata
        Nodata value to record; defaults to the variable's ``nodata`` attr, or NaN for floats.
    compress
        GDAL compression (``deflate``, ``zstd``, ``lzw``, ...).

    Returns
    -------
    pathlib.Path
        The written file.

    Examples
    --------
    >>> import geoarray, tempfile, os  # doctest: +SKIP
    >>> geoarray.export_geotiff(ds.mask.isel(time=0), "mask.tif")  # doctest: +SKIP
    """
    if not isinstance(da, xr.DataArray):
        raise RasterError(
            f"expected an xarray.DataArray, got {type(da).__name__}; select one variable: ds['mask']."
        )
    out = Path(path)
    check_file_path(out, "a Cloud-Optimized GeoTIFF", (".tif", ".tiff"))
    if "time" in da.dims:
        if da.sizes["time"] != 1:
            raise RasterError(
                f"{da.name!r} has {da.sizes['time']} dates; a GeoTIFF holds one. "
                "Select one: `da.isel(time=0)` or `da.sel(time='2021-05-01')`."
            )
        da = da.isel(time=0)
    dims = tuple(map(str, da.dims))
    other = [d for d in dims if d not in ("y", "x")]
    if not {"y", "x"} <= set(dims) or len(other) > 1:
        raise RasterError(
            f"{da.name!r} has dims {dims}; expected (y, x) or (<dim>, y, x), in any order. "
            "Select extra dims away, e.g. `.isel(feature=0)`, or stack them into one."
        )
    if other and da.sizes[other[0]] == 0:
        raise RasterError(f"{da.name!r} has no {other[0]!r} (length 0); expected at least one band to write.")
    da = da.transpose(*other, "y", "x")
    dims = tuple(map(str, da.dims))
    if da.rio.crs is None:
        raise CRSError(
            f"{da.name!r} has no CRS; expected a `spatial_ref` coordinate (take it from the cube)."
        )
    transform = transform_of(da, repr(da.name))
    if transform.e > 0:  # south-up coordinates: write the usual north-up file
        da = da.isel(y=slice(None, None, -1))
        transform = transform_of(da, repr(da.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    data = da.load()
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype == np.float16:
        data = data.astype(np.float32)
    if nodata is None:
        nodata = da.attrs.get("nodata", np.nan if np.issubdtype(data.dtype, np.floating) else None)
        if isinstance(nodata, (list, tuple, np.ndarray)):  # per-band values; a GeoTIFF has one
            values = {str(v) for v in np.asarray(nodata).ravel()}
            nodata = float(np.asarray(nodata).ravel()[0]) if len(values) == 1 else None
            if nodata is None:
                log.warning("export_geotiff: per-band nodata %s cannot be recorded in one GeoTIFF", values)
    attrs: dict[str, Any] = {}
    if len(dims) == 3:
        attrs["long_name"] = tuple(str(v) for v in data[dims[0]].values)
        data = data.rename({dims[0]: "band"})
    # overviews: class ids must not be interpolated (GDAL's COG default, cubic, makes ids no pixel holds, e.g.
    # 1 between classes 0 and 2), and cubic takes probabilities outside [0, 1]
    resampling = "AVERAGE" if np.issubdtype(data.dtype, np.floating) else "NEAREST"
    data = data.copy()
    data.attrs = attrs
    data.encoding = {}
    data = data.rio.write_transform(transform)
    if nodata is not None:
        data = data.rio.write_nodata(nodata, encoded=False)
    return atomic_write(
        out,
        lambda tmp: data.rio.to_raster(
            tmp, driver="COG", compress=compress, overview_resampling=resampling, recalc_transform=False
        ),
    )
