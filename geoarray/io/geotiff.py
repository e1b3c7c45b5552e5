"""GeoTIFF in and out: :func:`from_geotiff`, :func:`read_labels`, :func:`export_geotiff`.

Reading goes through rioxarray, so cubes stay lazy. Files on another grid are warped onto the reference grid
through a rasterio ``WarpedVRT``, which is also lazy: each dask chunk warps only its own window.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from geoarray._atomic import atomic_write
from geoarray._constants import LABEL_NODATA
from geoarray.cube import DEFAULT_CHUNK
from geoarray.errors import CRSError, NoOverlapError, RasterError, TimeError

__all__ = ["export_geotiff", "from_geotiff", "read_labels"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_DATE_TAGS = (
    "TIFFTAG_DATETIME",
    "ACQUISITIONDATETIME",
    "ACQUISITION_DATE",
    "DATE_ACQUIRED",
    "DATETIME",
    "DATE",
)
_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")


class _Grid:
    """The target pixel grid: CRS, affine transform and shape."""

    def __init__(self, crs: Any, transform: Any, height: int, width: int) -> None:
        self.crs, self.transform, self.height, self.width = crs, transform, height, width

    def same(self, src: Any) -> bool:
        return (
            src.crs == self.crs
            and (src.height, src.width) == (self.height, self.width)
            and src.transform.almost_equals(self.transform, precision=1e-9 * max(1.0, abs(self.transform.a)))
        )

    def vrt(self, src: Any, resampling: Resampling, nodata: Any = None) -> WarpedVRT:
        kw: dict[str, Any] = {}
        if nodata is not None:
            kw["nodata"] = nodata
        return WarpedVRT(
            src,
            crs=self.crs,
            transform=self.transform,
            height=self.height,
            width=self.width,
            resampling=resampling,
            **kw,
        )


def _open_da(source: Any, **kw: Any) -> xr.DataArray:
    """rioxarray.open_rasterio, typed: geoarray always opens one raster as one DataArray."""
    da = rioxarray.open_rasterio(source, lock=False, masked=False, **kw)
    if not isinstance(da, xr.DataArray):  # pragma: no cover - only for multi-subdataset files
        raise RasterError(f"{source!r} holds several subdatasets; expected a plain GeoTIFF.")
    return da


def _as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _open_checked(path: Path) -> Any:
    if not path.exists():
        raise RasterError(f"GeoTIFF {str(path)!r} does not exist. Check the path (cwd is {os.getcwd()!r}).")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise RasterError(f"{str(path)!r} is not a readable raster ({e}). Expected a GeoTIFF.") from None


def _date_of(path: Path, tags: dict[str, str]) -> pd.Timestamp | None:
    for key in _DATE_TAGS:
        if key in tags:
            raw = tags[key].strip()
            # TIFF's own format is "YYYY:MM:DD HH:MM:SS"
            raw = re.sub(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", raw)
            try:
                return pd.Timestamp(raw).tz_localize(None) if pd.Timestamp(raw).tzinfo else pd.Timestamp(raw)
            except ValueError:
                log.debug("unparseable date tag %s=%r in %s", key, raw, path)
    m = _DATE_IN_NAME.search(path.stem)
    if m:
        return pd.Timestamp(f"{m.group(1)}-{m.group(2)}-{m.group(3)}")
    return None


def _resampling(name: str) -> Resampling:
    try:
        return Resampling[name]
    except KeyError:
        raise RasterError(
            f"resampling={name!r} is unknown; expected one of {[r.name for r in Resampling][:12]} ..."
        ) from None


def from_geotiff(
    paths: PathLike | Sequence[PathLike],
    *,
    times: Sequence[Any] | None = None,
    bands: Sequence[str] | None = None,
    chunk: int = DEFAULT_CHUNK,
    resampling: str = "bilinear",
    sensor: str | None = None,
) -> xr.Dataset:
    """Build a lazy cube from one multi-band GeoTIFF per date.

    Parameters
    ----------
    paths
        One path or a sequence of paths; every file holds all bands of one date.
    times
        One date per file. When omitted, each date comes from the file's tags (``TIFFTAG_DATETIME``,
        ``ACQUISITION_DATE``, ...) or from a ``YYYYMMDD`` / ``YYYY-MM-DD`` in its name.
    bands
        Band names. When omitted they come from the band descriptions of the first file, else ``B1 .. Bn``.
    chunk
        Dask chunk size in ``y`` and ``x``.
    resampling
        How files on another grid are warped onto the first file's grid (rasterio ``Resampling`` name).
    sensor
        If given, a ``sensor`` coordinate along ``time`` with this value.

    Returns
    -------
    xarray.Dataset
        A lazy cube: ``imagery(time, band, y, x)`` in the files' dtype, sorted by time, and ``valid(time, y, x)``
        when the files declare a nodata value (a pixel is invalid when all its bands are nodata).

    Raises
    ------
    RasterError
        Missing or unreadable files, or files with different band counts.
    TimeError
        No date could be found for a file, or two files share a date.
    CRSError
        A file without a CRS.

    Examples
    --------
    >>> import geoarray
    >>> ds = geoarray.from_geotiff([geoarray.datasets.sample_path()], times=["2000-01-15"])
    >>> ds.imagery.dims
    ('time', 'band', 'y', 'x')
    """
    files = _as_paths(paths)
    if not files:
        raise RasterError("no GeoTIFF paths given; expected one file per date.")
    if times is not None and len(times) != len(files):
        raise TimeError(f"got {len(times)} times for {len(files)} files; expected one date per file.")
    rs = _resampling(resampling)

    infos = []
    for path in files:
        with _open_checked(path) as src:
            if src.crs is None:
                raise CRSError(
                    f"{str(path)!r} has no CRS; expected a georeferenced GeoTIFF. "
                    f"Set one with `rio edit-info --crs EPSG:XXXX {path}`."
                )
            infos.append(
                {
                    "path": path,
                    "count": src.count,
                    "dtype": src.dtypes[0],
                    "nodata": src.nodata,
                    "descriptions": src.descriptions,
                    "tags": src.tags(),
                    "grid": _Grid(src.crs, src.transform, src.height, src.width),
                }
            )
    counts = {str(i["path"].name): i["count"] for i in infos}
    if len(set(counts.values())) > 1:
        raise RasterError(
            f"the GeoTIFFs have different band counts {counts}; expected the same bands in every file. "
            "Split or subset them first (e.g. `gdal_translate -b 1 -b 2 ...`)."
        )
    n = infos[0]["count"]
    if bands is None:
        desc = infos[0]["descriptions"]
        names = list(desc) if all(desc) and len(set(desc)) == len(desc) else [f"B{i + 1}" for i in range(n)]
    else:
        names = [str(b) for b in bands]
        if len(names) != n:
            raise RasterError(
                f"got {len(names)} band names {names} for files with {n} bands; give one name per band."
            )

    if times is None:
        stamps = []
        for i in infos:
            d = _date_of(i["path"], i["tags"])
            if d is None:
                raise TimeError(
                    f"no date for {str(i['path'])!r}: no date tag and no YYYYMMDD in the file name. "
                    "Pass `times=[...]` with one date per file."
                )
            stamps.append(d)
    else:
        try:
            stamps = [pd.Timestamp(t) for t in times]
        except (ValueError, TypeError) as e:
            raise TimeError(
                f"times={list(times)!r} are not dates ({e}); expected e.g. '2021-05-01'."
            ) from None
    order = np.argsort(np.asarray(stamps, dtype="datetime64[ns]"), kind="stable")
    sorted_stamps = [stamps[k] for k in order]
    for a, b in itertools.pairwise(sorted_stamps):
        if a == b:
            raise TimeError(
                f"two files share the date {a.date()}; expected one file per date. Mosaic them first."
            )

    grid: _Grid = infos[0]["grid"]
    nodatas = [i["nodata"] for i in infos]
    dtype = np.result_type(*[np.dtype(i["dtype"]) for i in infos])
    chunks = {"band": -1, "y": chunk, "x": chunk}
    arrays: list[xr.DataArray] = []
    masks: list[xr.DataArray | None] = []
    for k in order:
        info = infos[k]
        if grid.same(info["grid"]):
            da = _open_da(info["path"], chunks=chunks)
        else:
            log.info(
                "warping %s onto the grid of %s (%s)", info["path"].name, infos[0]["path"].name, resampling
            )
            with rasterio.open(info["path"]) as src, grid.vrt(src, rs, nodata=info["nodata"]) as vrt:
                da = _open_da(vrt, chunks=chunks)
        da = da.drop_vars(["spatial_ref"], errors="ignore")
        nd = info["nodata"]
        # GDAL's per-dataset mask semantics: a pixel is nodata when all its bands are
        masks.append(None if nd is None else ~(da.isnull() if np.isnan(nd) else da == nd).all("band"))
        arrays.append(da.astype(dtype))
    ref = arrays[0]
    coords = {"y": ref.y.values, "x": ref.x.values}
    arrays = [a.assign_coords(band=names, **coords) for a in arrays]
    img = xr.concat(arrays, dim="time", join="exact", combine_attrs="drop_conflicts")
    img = img.assign_coords(
        time=np.asarray(sorted_stamps, dtype="datetime64[ns]"), band=np.asarray(names, dtype=object)
    )
    img.attrs = {k: v for k, v in img.attrs.items() if k not in ("_FillValue", "scale_factor", "add_offset")}
    ds = xr.Dataset({"imagery": img.transpose("time", "band", "y", "x")})
    if any(m is not None for m in masks):
        full = [
            (m if m is not None else xr.ones_like(a.isel(band=0, drop=True), dtype=bool)).assign_coords(
                coords
            )
            for m, a in zip(masks, arrays, strict=True)
        ]
        valid = xr.concat(full, dim="time").assign_coords(time=ds.time).transpose("time", "y", "x")
        valid.attrs = {"long_name": "valid pixel (not nodata in every band)"}  # not the raster's tags
        ds["valid"] = valid
        nodata = next(v for v in nodatas if v is not None)
        ds["imagery"].attrs["nodata"] = nodata
    if sensor is not None:
        ds = ds.assign_coords(sensor=("time", np.asarray([sensor] * len(files), dtype=object)))
    return ds.rio.write_crs(grid.crs)


def _grid_of(like: xr.Dataset | xr.DataArray) -> _Grid:
    crs = like.rio.crs
    if crs is None:
        raise CRSError(
            "`like` has no CRS; expected a cube with a `spatial_ref` coordinate (see validate_cube)."
        )
    return _Grid(crs, like.rio.transform(recalc=True), like.sizes["y"], like.sizes["x"])


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
        ``labels(y, x)`` on ``like``'s coordinates, with attrs ``classes`` and ``nodata``; lazy.

    Raises
    ------
    RasterError
        Not a single-band integer raster.
    NoOverlapError
        The raster does not overlap the cube at all.

    Examples
    --------
    >>> import geoarray  # doctest: +SKIP
    >>> ds["labels"] = geoarray.read_labels("mask.tif", ds)  # doctest: +SKIP
    """
    grid = _grid_of(like)
    p = Path(path)
    with _open_checked(p) as src:
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
            da = _open_da(vrt, chunks={"y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK})
    lab = da.isel(band=0, drop=True).drop_vars("spatial_ref", errors="ignore")
    lab = lab.assign_coords(y=like["y"].values, x=like["x"].values)
    if classes is None:
        ids = np.unique(np.asarray(lab.values))
        ids = ids[ids != fill]
        classes = [str(i) for i in range(int(ids.max()) + 1)] if ids.size else []
    lab.attrs = {"classes": list(classes), "nodata": fill, "long_name": "labels", "source": str(p)}
    lab.name = "labels"
    return lab.rio.write_crs(grid.crs)


def export_geotiff(
    da: xr.DataArray,
    path: PathLike,
    *,
    nodata: float | None = None,
    compress: str = "deflate",
) -> Path:
    """Write a 2-D ``(y, x)`` or 3-D ``(dim, y, x)`` variable as a Cloud-Optimized GeoTIFF.

    The CRS and transform come from the variable's ``spatial_ref`` and coordinates; the names along the
    first dim (classes, features, bands) become band descriptions. The file is written to a temporary
    name and renamed, so a failed export never leaves a partial file.

    Parameters
    ----------
    da
        The variable, e.g. ``ds.mask.isel(time=0)`` or ``ds.probabilities.sel(time="2021-05-01")``. A ``time``
        dim of length 1 is dropped.
    path
        Output path (``.tif``).
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
    if "time" in da.dims:
        if da.sizes["time"] != 1:
            raise RasterError(
                f"{da.name!r} has {da.sizes['time']} dates; a GeoTIFF holds one. "
                "Select one: `da.isel(time=0)` or `da.sel(time='2021-05-01')`."
            )
        da = da.isel(time=0)
    dims = tuple(map(str, da.dims))
    if dims[-2:] != ("y", "x") or len(dims) not in (2, 3):
        raise RasterError(
            f"{da.name!r} has dims {dims}; expected (y, x) or (<dim>, y, x). "
            f"Use `.transpose(..., 'y', 'x')` and select extra dims."
        )
    if da.rio.crs is None:
        raise CRSError(
            f"{da.name!r} has no CRS; expected a `spatial_ref` coordinate (take it from the cube)."
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = da.load()
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype == np.float16:
        data = data.astype(np.float32)
    if nodata is None:
        nodata = da.attrs.get("nodata", np.nan if np.issubdtype(data.dtype, np.floating) else None)
    attrs: dict[str, Any] = {}
    if len(dims) == 3:
        attrs["long_name"] = tuple(str(v) for v in data[dims[0]].values)
        data = data.rename({dims[0]: "band"})
    data = data.copy()
    data.attrs = attrs
    data.encoding = {}
    if nodata is not None:
        data = data.rio.write_nodata(nodata, encoded=False)
    return atomic_write(out, lambda tmp: data.rio.to_raster(tmp, driver="COG", compress=compress))
