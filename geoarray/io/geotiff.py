"""GeoTIFF in and out: :func:`from_geotiff`, :func:`read_labels`, :func:`export_geotiff`.

Reading goes through rioxarray, so cubes stay lazy. Files on another grid are warped onto the reference grid
through a rasterio ``WarpedVRT``, which is also lazy: each dask chunk warps only its own window. File headers,
dates, names and nodata are in :mod:`geoarray.io._files`; grid geometry and footprints in :mod:`geoarray.io._grid`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import Resampling

from geoarray.cube import DEFAULT_CHUNK, check_chunk
from geoarray.errors import BandError, CubeError, RasterError, TimeError
from geoarray.io._files import (
    FileInfo,
    PathLike,
    all_missing,
    as_paths,
    as_times,
    band_names_from_files,
    band_nodata,
    check_nodata,
    dates_of,
    open_da,
    read_info,
    refuse_shared_dates,
    resampling_of,
    scale_attrs,
)
from geoarray.io._grid import Grid, check_overlap, dataset_mask, footprint
from geoarray.io._labels_export import export_geotiff, read_labels, select_time

__all__ = ["export_geotiff", "from_geotiff", "parse_nodata", "read_labels", "select_time"]

log = logging.getLogger(__name__)


def parse_nodata(text: str) -> float | list[float]:
    """Parse a command-line nodata value: ``"0"``, ``"nan"`` or one value per band, ``"0,0,0,255"``.

    Examples
    --------
    >>> parse_nodata("0"), parse_nodata("0,0,255")
    (0.0, [0.0, 0.0, 255.0])
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise RasterError(
            f"--nodata {text!r}; expected a number (e.g. 0 or nan) or one number per band separated by "
            "commas (e.g. 0,0,0,255)."
        ) from None
    return values[0] if len(values) == 1 else values


def from_geotiff(
    paths: PathLike | Sequence[PathLike],
    *,
    times: Sequence[Any] | str | None = None,
    bands: Sequence[str] | None = None,
    stack: Literal["time", "band"] = "time",
    nodata: float | Sequence[float] | None = None,
    chunk: int = DEFAULT_CHUNK,
    resampling: str = "bilinear",
    sensor: str | None = None,
) -> xr.Dataset:
    """Build a lazy cube from GeoTIFFs: one multi-band file per date, or one file per band of one date.

    Parameters
    ----------
    paths
        One path or a sequence of paths.
    times
        With ``stack="time"``: one date per file. With ``stack="band"``: one date (a string or a list of one).
        When omitted, each date comes from the file's tags (``TIFFTAG_DATETIME``, ``ACQUISITION_DATE``, ...)
        or from a ``YYYYMMDD`` / ``YYYY-MM-DD`` in its name.
    bands
        Band names, one per band of the cube. When omitted: with ``stack="time"``, the band descriptions of
        the first file, else ``B1 .. Bn``; with ``stack="band"``, each file's band description, else its name
        without the part all the names share (``LC08_..._B2.TIF``, ``LC08_..._B3.TIF`` -> ``B2``, ``B3``).
    stack
        ``"time"`` (default): every file holds all bands of one date. ``"band"``: the files are bands of one
        date (e.g. Landsat's one file per band), stacked in the order given.
    nodata
        The value that marks fill pixels, for files whose nodata tag is missing or wrong (Landsat scenes
        often ship with fill 0 and no tag): one number for every band, or a list with one per band of the
        cube. It replaces the files' own tags. A pixel is invalid (``valid`` is False) when **all** the bands
        of one file equal their nodata (GDAL's per-dataset mask; Landsat fill is 0 in every band, while a
        dark pixel may be 0 in one band); with ``stack="band"``, fill in any one file makes the pixel
        invalid. It is also the source nodata of warping, so fill never blends into data.
    chunk
        Dask chunk size in ``y`` and ``x`` (a whole number >= 1).
    resampling
        How files on another grid are warped onto the first file's grid (rasterio ``Resampling`` name).
    sensor
        If given, a ``sensor`` coordinate along ``time`` with this value.

    Returns
    -------
    xarray.Dataset
        A lazy cube: ``imagery(time, band, y, x)`` in the files' (common) dtype, sorted by time, on the first
        file's grid, and ``valid(time, y, x)`` when some pixels may be fill: where nodata is known (tags or
        ``nodata=``; NaN counts as nodata in float files that declare one), where a file's GDAL mask (an
        internal or ``.msk`` mask, or an alpha band: alpha bands are masks, not bands of the cube) marks
        fill, and outside the area a warped file covers. Scale/offset tags that are not identity are kept as
        ``imagery.attrs["scales"]`` and ``["offsets"]`` (per band, not applied: physical value = pixel *
        scale + offset).

    Raises
    ------
    RasterError
        Missing or unreadable files, files with different band counts (``stack="time"``), different
        scale/offset tags for one band across dates, or a bad ``chunk``, ``stack`` or ``nodata``.
    NoOverlapError
        A file that does not overlap the first file's grid.
    BandError
        Two bands with one name (``bands=`` with a repeat, or a file listed twice with ``stack="band"``).
    TimeError
        No date could be found for a file, two files share a date, or ``times`` does not fit.
    CRSError
        A file without a CRS.

    Examples
    --------
    >>> import geoarray
    >>> ds = geoarray.from_geotiff([geoarray.datasets.sample_path()], times=["2000-01-15"])
    >>> ds.imagery.dims
    ('time', 'band', 'y', 'x')
    """
    try:
        chunk = check_chunk(chunk)
    except CubeError as e:
        raise RasterError(str(e)) from None
    if stack not in ("time", "band"):
        raise RasterError(
            f"stack={stack!r}; expected 'time' (one multi-band file per date) or 'band' (one file per band "
            "of one date)."
        )
    user_nodata = check_nodata(nodata)
    if sensor is not None and not isinstance(sensor, str):
        raise RasterError(
            f"sensor={sensor!r}; expected one name (str) for every date, e.g. 'L8'. For one sensor per date, "
            "build one cube per sensor and concatenate them, or assign `ds.coords['sensor'] = ('time', [...])`."
        )
    if isinstance(bands, str):
        bands = [bands]
    files = as_paths(paths)
    if not files:
        raise RasterError("no GeoTIFF paths given; expected one file per date (or per band, stack='band').")
    given = as_times(times)
    if given is not None and stack == "time" and len(given) != len(files):
        raise TimeError(
            f"got {len(given)} times for {len(files)} files; expected one date per file. If the files are "
            "bands of one date, pass stack='band' with one date."
        )
    if given is not None and stack == "band" and len(given) != 1:
        raise TimeError(
            f"got {len(given)} times for stack='band'; the files are bands of one date, so give one date, "
            "e.g. times=['2020-05-18']."
        )
    rs = resampling_of(resampling)
    infos = [read_info(path) for path in files]
    grid = infos[0].grid
    if grid.transform.b != 0 or grid.transform.d != 0:  # later files are warped onto it: any grid will do
        raise RasterError(
            f"{str(files[0])!r}, whose grid the cube takes, is rotated or sheared (transform "
            f"{tuple(grid.transform)[:6]}); a cube's y/x axes follow the CRS axes. Warp it north-up first "
            f"(`gdalwarp {files[0]} north_up.tif`), or list a north-up file first."
        )
    for info in infos[1:]:
        check_overlap(grid, files[0], info.grid, info.path)

    if stack == "time":
        counts = {str(i.path.name): i.count for i in infos}
        if len(set(counts.values())) > 1:
            raise RasterError(
                f"the GeoTIFFs have different band counts {counts}; expected the same bands in every file "
                "(stack='time'). Split or subset them first (e.g. `gdal_translate -b 1 -b 2 ...`), or pass "
                "stack='band' if the files are bands of one date."
            )
        n = infos[0].count
        desc = infos[0].descriptions
        default = [str(d) for d in desc] if all(desc) and len(set(desc)) == len(desc) else None
        default = default or [f"B{i + 1}" for i in range(n)]
    else:
        n = sum(i.count for i in infos)
        default = band_names_from_files(infos)
    if bands is None:
        names = default
    else:
        names = [str(b) for b in bands]
        if len(names) != n:
            raise RasterError(
                f"got {len(names)} band names {names} for {n} bands"
                + (" (all files together, stack='band')" if stack == "band" else "")
                + (
                    "; an alpha band (colour interpretation 'alpha') is read as the mask of `valid`, not as a band"
                    " (if it holds data, e.g. a NIR band tagged alpha by mistake, fix the tag: `rio edit-info "
                    "--colorinterp red,green,blue,undefined`)"
                    if any(i.alpha for i in infos)
                    else ""
                )
                + "; give one name per band."
            )
    dup = sorted({b for b in names if names.count(b) > 1})
    if dup:
        twice = sorted({str(f) for f in files if files.count(f) > 1})
        raise BandError(
            f"duplicate band names {dup} in {names}; expected one name per band"
            + (f" (the files {twice} are listed more than once)" if twice else "")
            + ". Give each band its own name with bands=[...], or list each file once."
        )
    if user_nodata is not None and len(user_nodata) not in (1, n):
        raise RasterError(
            f"nodata= has {len(user_nodata)} values for {n} bands; expected one value for all bands or one "
            "per band."
        )

    stamps = dates_of(infos, given, stack)
    dtype = np.result_type(*[i.dtype for i in infos])
    ref_coords: dict[str, np.ndarray] = {}
    opened: list[_Opened] = []
    for info, first_band in zip(infos, _band_offsets(infos, stack), strict=True):
        nd = band_nodata(info, user_nodata, first_band, n)
        da, outside = _open_on_grid(info, grid, infos[0].path, rs, nd, chunk)
        if not ref_coords:
            ref_coords = {"y": da.y.values, "x": da.x.values}
        da = da.assign_coords(ref_coords)
        if outside is not None:
            outside = outside.assign_coords(ref_coords)
        opened.append(_Opened(info, da, nd, all_missing(da, nd), outside))

    if stack == "time":
        order = [int(k) for k in np.argsort(np.asarray(stamps, dtype="datetime64[ns]"), kind="stable")]
        refuse_shared_dates([stamps[k] for k in order], [files[k] for k in order])
        per_date = [[opened[k]] for k in order]
        stamps = [stamps[k] for k in order]
    else:
        per_date = [opened]
    arrays, masks = [], []
    for group in per_date:
        img = xr.concat([o.da for o in group], dim="band") if len(group) > 1 else group[0].da
        arrays.append(img.astype(dtype).assign_coords(band=names))
        masks.append(_invalid(group))
    img = xr.concat(arrays, dim="time", join="exact", combine_attrs="drop_conflicts")
    img = img.assign_coords(
        time=np.asarray(stamps, dtype="datetime64[ns]"), band=np.asarray(names, dtype=object)
    )
    img.attrs = {}  # the first file's tags (statistics, scales) describe neither the cube nor its other dates
    img.attrs.update(scale_attrs([[o.info for o in group] for group in per_date]))
    ds = xr.Dataset({"imagery": img.transpose("time", "band", "y", "x")})
    if any(m is not None for m in masks):
        never = xr.zeros_like(arrays[0].isel(band=0, drop=True), dtype=bool)
        valid = xr.concat([~(m if m is not None else never) for m in masks], dim="time")
        valid = valid.assign_coords({"time": ds.time, **ref_coords}).transpose("time", "y", "x")
        valid.attrs = {"long_name": "valid pixel (not nodata in every band, inside the file's footprint)"}
        ds["valid"] = valid.drop_vars("band", errors="ignore")
    if stack == "band":
        per_band: list[float | None] | None = [v for o in opened for v in o.nodata]
    else:  # one value per band only when every date agrees
        per_band = list(opened[0].nodata) if len({tuple(o.nodata) for o in opened}) == 1 else None
    if per_band and None not in per_band:
        same = len({str(v) for v in per_band}) == 1  # str: NaN == NaN
        ds["imagery"].attrs["nodata"] = per_band[0] if same else per_band
    if sensor is not None:
        ds = ds.assign_coords(sensor=("time", np.asarray([sensor] * ds.sizes["time"], dtype=object)))
    return ds.rio.write_crs(grid.crs)


def _band_offsets(infos: list[FileInfo], stack: str) -> list[int]:
    if stack == "time":
        return [0] * len(infos)
    return [int(v) for v in np.cumsum([0, *(i.count for i in infos[:-1])])]


def _open_on_grid(
    info: FileInfo, grid: Grid, first: Path, rs: Resampling, nodata: list[float | None], chunk: int
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """One file as (band, y, x) on ``grid`` (lazy), and where it leaves the grid uncovered (or None)."""
    chunks = {"band": -1, "y": chunk, "x": chunk}
    warp = not grid.same(info.grid)
    if not warp:
        da = open_da(info.path, chunks=chunks)
        outside = None
    else:
        log.info("warping %s onto the grid of %s (%s)", info.path.name, first.name, rs.name)
        single = {v for v in nodata}
        nd = single.pop() if len(single) == 1 else None
        # the source nodata keeps fill out of the resampling kernel; None lets GDAL use the file's own tag
        with rasterio.open(info.path) as src, grid.vrt(src, rs, nodata=nd, src_nodata=nd) as vrt:
            da = open_da(vrt, chunks=chunks)
        outside = footprint(grid, info.grid, da.y.values, da.x.values, chunk)
    if info.alpha:  # the alpha band is the mask below, not a band of the cube
        da = da.isel(band=list(info.bands))
    if info.masked:
        # GDAL's per-dataset mask (internal mask, .msk or alpha) records fill beside (GDAL: instead of) nodata
        mask = dataset_mask(
            info.path, grid, warp=warp, alpha=info.alpha, shape=(da.sizes["y"], da.sizes["x"]), chunk=chunk
        )
        outside = mask if outside is None else outside | mask
    da = da.drop_vars(["spatial_ref"], errors="ignore")
    return da, outside


class _Opened(NamedTuple):
    """One file on the cube's grid."""

    info: FileInfo
    da: xr.DataArray  # (band, y, x), lazy
    nodata: list[float | None]  # per band
    missing: xr.DataArray | None  # (y, x): every band is nodata; None when some band has no nodata
    outside: xr.DataArray | None  # (y, x): outside the file's footprint; None when it covers the grid


def _invalid(group: list[_Opened]) -> xr.DataArray | None:
    """(y, x) True where a date's pixel is fill in some file: every band of that file nodata, masked, or outside
    a warped file. With stack='band' each file is its own band(s): one file's fill makes the pixel unusable
    even where the others hold data (e.g. bands of different footprints)."""
    out: xr.DataArray | None = None
    for o in group:
        for m in (o.missing, o.outside):
            if m is not None:
                out = m if out is None else out | m
    return out
