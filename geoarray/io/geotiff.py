"""GeoTIFF in and out: :func:`from_geotiff`, :func:`read_labels`, :func:`export_geotiff`.

Reading goes through rioxarray, so cubes stay lazy. Files on another grid are warped onto the reference grid
through a rasterio ``WarpedVRT``, which is also lazy: each dask chunk warps only its own window.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask.array as dsa
import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from geoarray._atomic import atomic_write
from geoarray.cube import DEFAULT_CHUNK, check_chunk, check_regular
from geoarray.datasets import LABEL_NODATA
from geoarray.errors import CRSError, CubeError, NoOverlapError, RasterError, TimeError

__all__ = ["export_geotiff", "from_geotiff", "parse_nodata", "read_labels", "select_time"]

log = logging.getLogger(__name__)
_LOCAL = threading.local()

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

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return array_bounds(self.height, self.width, self.transform)  # (west, south, east, north)

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


@dataclass(frozen=True)
class _Info:
    """What from_geotiff needs to know about one file, read from its header only."""

    path: Path
    count: int
    dtype: np.dtype[Any]
    nodata: tuple[float | None, ...]  # per band, from the file's tags
    descriptions: tuple[str | None, ...]
    tags: dict[str, str]
    grid: _Grid
    scales: tuple[float, ...]
    offsets: tuple[float, ...]


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
    if path.is_dir():
        raise RasterError(
            f"{str(path)!r} is a directory; expected a GeoTIFF file. Pass the files in it, e.g. "
            f"`sorted(Path({str(path)!r}).glob('*.tif'))`."
        )
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise RasterError(f"{str(path)!r} is not a readable raster ({e}). Expected a GeoTIFF.") from None


def _info(path: Path) -> _Info:
    with _open_checked(path) as src:
        if src.crs is None:
            raise CRSError(
                f"{str(path)!r} has no CRS; expected a georeferenced GeoTIFF. "
                f"Set one with `rio edit-info --crs EPSG:XXXX {path}`."
            )
        if src.count == 0:
            raise RasterError(f"{str(path)!r} has no bands; expected a raster with at least one band.")
        if len(set(src.dtypes)) > 1:
            raise RasterError(
                f"{str(path)!r} mixes band types {sorted(set(src.dtypes))}; expected one type for all bands. "
                "Convert it, e.g. `gdal_translate -ot Float32 in.tif out.tif`."
            )
        return _Info(
            path=path,
            count=src.count,
            dtype=np.dtype(src.dtypes[0]),
            nodata=tuple(src.nodatavals),
            descriptions=tuple(src.descriptions),
            tags=src.tags(),
            grid=_Grid(src.crs, src.transform, src.height, src.width),
            scales=tuple(float(v) for v in src.scales),
            offsets=tuple(float(v) for v in src.offsets),
        )


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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_nodata(nodata: Any) -> list[float] | None:
    """``nodata=`` as a list (one value, or one per band); refused before any file is opened."""
    if nodata is None:
        return None
    values = [nodata] if _is_number(nodata) else list(nodata) if isinstance(nodata, (list, tuple)) else None
    if not values or not all(_is_number(v) for v in values):
        raise RasterError(
            f"nodata={nodata!r}; expected a number (e.g. nodata=0 for Landsat fill) or a list with one number "
            "per band (e.g. nodata=[0, 0, 0, 255])."
        )
    return [float(v) for v in values]


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


def _nodata_for(value: float, dtype: np.dtype[Any], *, what: str) -> float | None:
    """``value`` if it can occur in ``dtype`` data; otherwise an error (user values) or None (file tags)."""
    if np.issubdtype(dtype, np.integer):
        ok = not np.isnan(value) and float(value).is_integer()
        ok = ok and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max
        if not ok:
            if what == "argument":
                raise RasterError(
                    f"nodata={value:g} cannot occur in {dtype} pixels (range {np.iinfo(dtype).min}.."
                    f"{np.iinfo(dtype).max}, whole numbers); expected the fill value the files use, e.g. 0."
                )
            log.warning("ignoring nodata tag %s: it cannot occur in %s pixels", value, dtype)
            return None
    return float(value)


def _band_nodata(info: _Info, user: list[float] | None, first_band: int, n_bands: int) -> list[float | None]:
    """Per-band nodata of one file: the argument's (one value, or the file's slice of the per-band list),
    else the file's tags."""
    if user is None:
        return [None if v is None else _nodata_for(v, info.dtype, what="tag") for v in info.nodata]
    if len(user) == 1:
        values = user * info.count
    elif len(user) == n_bands:
        values = user[first_band : first_band + info.count]
    else:
        raise RasterError(
            f"nodata= has {len(user)} values for a cube of {n_bands} bands; expected one value for all bands "
            "or one per band."
        )
    return [_nodata_for(v, info.dtype, what="argument") for v in values]


def _all_missing(da: xr.DataArray, nodata: list[float | None]) -> xr.DataArray | None:
    """(y, x): True where every band holds its nodata (GDAL's per-dataset mask); None if some band has none.

    In float data NaN counts as nodata too, beside the declared value.
    """
    if any(v is None for v in nodata):
        return None
    nd = np.asarray(nodata, dtype=np.float64)
    miss = da.isnull() if da.dtype.kind == "f" else xr.zeros_like(da, dtype=bool)
    finite = ~np.isnan(nd)
    if finite.any():
        ref = xr.DataArray(np.where(finite, nd, 0).astype(da.dtype), dims="band")
        miss = miss | ((da == ref) & xr.DataArray(finite, dims="band"))
    return miss.all("band")


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


def _footprint(grid: _Grid, info: _Info, ys: np.ndarray, xs: np.ndarray, chunk: int) -> xr.DataArray | None:
    """(y, x): True outside the area a warped file covers, or None when it covers the whole grid.

    A file without nodata is warped with 0 outside its footprint, which would pass for data; the footprint
    is computed from the pixel centres (lazily, one dask block per chunk), not from the values.
    """
    src = info.grid
    inner = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    sb = src.bounds
    tol = 1e-9 * max(abs(v) for v in sb) + 1e-9
    if (
        inner[0] >= sb[0] - tol
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


def _check_overlap(grid: _Grid, first: Path, info: _Info) -> None:
    sb = info.grid.bounds
    try:
        b = transform_bounds(grid.crs, info.grid.crs, *grid.bounds, densify_pts=21)
    except Exception:  # a grid that cannot be expressed in the other CRS does not overlap it
        b = (np.inf, np.inf, -np.inf, -np.inf)
    if b[0] >= sb[2] or b[2] <= sb[0] or b[1] >= sb[3] or b[3] <= sb[1]:
        raise NoOverlapError(
            f"{info.path.name!r} (bounds {tuple(round(v, 4) for v in sb)} in {info.grid.crs}) does not overlap "
            f"the grid of the first file {first.name!r} (bounds {tuple(round(v, 4) for v in grid.bounds)} in "
            f"{grid.crs}), onto which every file is warped; it would give a date of fill values only. Expected "
            "files of one area: check the paths, or build one cube per area."
        )


def _as_times(times: Any) -> list[Any] | None:
    if times is None:
        return None
    if isinstance(times, (str, bytes, dt.date, np.datetime64, pd.Timestamp)):
        return [times]
    return list(times)


def _stamps(times: list[Any]) -> list[pd.Timestamp]:
    try:
        out = [pd.Timestamp(t) for t in times]
    except (ValueError, TypeError) as e:
        raise TimeError(f"times={list(times)!r} are not dates ({e}); expected e.g. '2021-05-01'.") from None
    if any(pd.isna(t) for t in out):
        raise TimeError(f"times={list(times)!r} holds a missing date (NaT); expected one date per file.")
    return [t.tz_convert(None) if t.tzinfo else t for t in out]


def _band_names_from_files(infos: list[_Info]) -> list[str]:
    """Names for stack='band': descriptions, else the file names with their common prefix and suffix cut."""
    stems = _distinct_stems([i.path.stem for i in infos])
    names: list[str] = []
    for info, stem in zip(infos, stems, strict=True):
        desc = info.descriptions
        if all(desc):
            names += [str(d) for d in desc]
        elif info.count == 1:
            names.append(stem)
        else:
            names += [f"{stem}_B{k + 1}" for k in range(info.count)]
    if len(set(names)) != len(names):  # e.g. every file describes its band as "Band 1"
        names = [
            stem if i.count == 1 else f"{stem}_B{k + 1}"
            for i, stem in zip(infos, stems, strict=True)
            for k in range(i.count)
        ]
    return names


def _common_prefix(texts: list[str]) -> str:
    """The characters all ``texts`` start with (character-wise on purpose: names, not paths)."""
    first = min(texts, key=len)
    for k, ch in enumerate(first):
        if any(t[k] != ch for t in texts):
            return first[:k]
    return first


def _distinct_stems(stems: list[str]) -> list[str]:
    """``LC08_..._B2``, ``LC08_..._B3`` -> ``B2``, ``B3``: cut the common prefix/suffix at a separator."""
    if len(stems) < 2:
        return stems
    pre = _common_prefix(stems)
    cut = max(pre.rfind(c) for c in "_-. ") + 1
    rev = [s[::-1] for s in stems]
    suf = _common_prefix(rev)
    cut_end = max(suf.rfind(c) for c in "_-. ") + 1
    out = [s[cut : len(s) - cut_end] for s in stems]
    return out if all(out) and len(set(out)) == len(out) else stems


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
        cube. It replaces the files' own tags. A pixel is invalid (``valid`` is False) when **all** its bands
        equal their nodata (GDAL's per-dataset mask; Landsat fill is 0 in every band, while a dark pixel
        may be 0 in one band). It is also the source nodata of warping, so fill never blends into data.
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
        ``nodata=``; NaN counts as nodata in float files that declare one), and outside the area a warped
        file covers. Scale/offset tags that are not identity are kept as ``imagery.attrs["scales"]`` and
        ``["offsets"]`` (per band, not applied: physical value = pixel * scale + offset).

    Raises
    ------
    RasterError
        Missing or unreadable files, files with different band counts (``stack="time"``), different
        scale/offset tags for one band across dates, or a bad ``chunk``, ``stack`` or ``nodata``.
    NoOverlapError
        A file that does not overlap the first file's grid.
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
    user_nodata = _check_nodata(nodata)
    files = _as_paths(paths)
    if not files:
        raise RasterError("no GeoTIFF paths given; expected one file per date (or per band, stack='band').")
    given = _as_times(times)
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
    rs = _resampling(resampling)
    infos = [_info(path) for path in files]
    grid = infos[0].grid
    for info in infos[1:]:
        _check_overlap(grid, files[0], info)

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
        default = _band_names_from_files(infos)
    if bands is None:
        names = default
    else:
        names = [str(b) for b in bands]
        if len(names) != n:
            raise RasterError(
                f"got {len(names)} band names {names} for {n} bands"
                + (" (all files together, stack='band')" if stack == "band" else "")
                + "; give one name per band."
            )
    if user_nodata is not None and len(user_nodata) not in (1, n):
        raise RasterError(
            f"nodata= has {len(user_nodata)} values for {n} bands; expected one value for all bands or one "
            "per band."
        )

    stamps = _dates(infos, given, stack)
    dtype = np.result_type(*[i.dtype for i in infos])
    ref_coords: dict[str, np.ndarray] = {}
    opened = []
    for info, first_band in zip(infos, _band_offsets(infos, stack), strict=True):
        nd = _band_nodata(info, user_nodata, first_band, n)
        da, outside = _open_on_grid(info, grid, infos[0].path, rs, nd, chunk)
        if not ref_coords:
            ref_coords = {"y": da.y.values, "x": da.x.values}
        da = da.assign_coords(ref_coords)
        missing = _all_missing(da, nd)
        opened.append((info, da, nd, missing, outside))

    if stack == "time":
        order = [int(k) for k in np.argsort(np.asarray(stamps, dtype="datetime64[ns]"), kind="stable")]
        _refuse_shared_dates([stamps[k] for k in order], [files[k] for k in order])
        per_date = [[opened[k]] for k in order]
        stamps = [stamps[k] for k in order]
    else:
        per_date = [opened]
    arrays, masks = [], []
    for group in per_date:
        img = xr.concat([g[1] for g in group], dim="band") if len(group) > 1 else group[0][1]
        arrays.append(img.astype(dtype).assign_coords(band=names))
        masks.append(_invalid(group))
    img = xr.concat(arrays, dim="time", join="exact", combine_attrs="drop_conflicts")
    img = img.assign_coords(
        time=np.asarray(stamps, dtype="datetime64[ns]"), band=np.asarray(names, dtype=object)
    )
    img.attrs = {}  # the first file's tags (statistics, scales) describe neither the cube nor its other dates
    img.attrs.update(_scale_attrs(per_date, stack))
    ds = xr.Dataset({"imagery": img.transpose("time", "band", "y", "x")})
    if any(m is not None for m in masks):
        never = xr.zeros_like(arrays[0].isel(band=0, drop=True), dtype=bool)
        valid = xr.concat([~(m if m is not None else never) for m in masks], dim="time")
        valid = valid.assign_coords({"time": ds.time, **ref_coords}).transpose("time", "y", "x")
        valid.attrs = {"long_name": "valid pixel (not nodata in every band, inside the file's footprint)"}
        ds["valid"] = valid.drop_vars("band", errors="ignore")
    if stack == "band":
        per_band: list[float | None] | None = [v for o in opened for v in o[2]]
    else:  # one value per band only when every date agrees
        per_band = list(opened[0][2]) if len({tuple(o[2]) for o in opened}) == 1 else None
    if per_band and None not in per_band:
        same = len({str(v) for v in per_band}) == 1  # str: NaN == NaN
        ds["imagery"].attrs["nodata"] = per_band[0] if same else per_band
    if sensor is not None:
        ds = ds.assign_coords(sensor=("time", np.asarray([sensor] * ds.sizes["time"], dtype=object)))
    return ds.rio.write_crs(grid.crs)


def _band_offsets(infos: list[_Info], stack: str) -> list[int]:
    if stack == "time":
        return [0] * len(infos)
    return [int(v) for v in np.cumsum([0, *(i.count for i in infos[:-1])])]


def _dates(infos: list[_Info], given: list[Any] | None, stack: str) -> list[pd.Timestamp]:
    """One date per file (stack='time') or the one date of all files (stack='band')."""
    if given is not None:
        return _stamps(given)
    found = [_date_of(i.path, i.tags) for i in infos]
    if stack == "time":
        for i, d in zip(infos, found, strict=True):
            if d is None:
                raise TimeError(
                    f"no date for {str(i.path)!r}: no date tag and no YYYYMMDD in the file name. "
                    "Pass `times=[...]` with one date per file."
                )
        return [d for d in found if d is not None]
    days = {d for d in found if d is not None}
    if not days:
        raise TimeError(
            f"no date for the bands {[i.path.name for i in infos]}: no date tag and no YYYYMMDD in the file "
            "names. Pass the date: times=['2020-05-18']."
        )
    if len(days) > 1:
        shown = {i.path.name: None if d is None else _fmt(d) for i, d in zip(infos, found, strict=True)}
        raise TimeError(
            f"the files stacked as bands of one date have different dates {shown}; stack='band' makes one "
            "date. Pass the date with times=['YYYY-MM-DD'] if they belong together, or use stack='time' for "
            "one multi-band file per date."
        )
    return [days.pop()]


def _fmt(t: pd.Timestamp) -> str:
    return str(t.date()) if t == t.normalize() else str(t)


def _refuse_shared_dates(stamps: list[pd.Timestamp], files: list[Path]) -> None:
    for a, b in itertools.pairwise(stamps):
        if a == b:
            same = [f.name for s, f in zip(stamps, files, strict=True) if s == a]
            raise TimeError(
                f"{same} share the date {_fmt(a)}; with stack='time' (the default) each file is one date. If they "
                "are bands of one date (one file per band), pass stack='band'. If they are tiles of one date, "
                "mosaic them first (e.g. `gdalbuildvrt mosaic.vrt tile1.tif tile2.tif`). If the dates are "
                "wrong, pass times=[...] with one date per file."
            )


def _open_on_grid(
    info: _Info, grid: _Grid, first: Path, rs: Resampling, nodata: list[float | None], chunk: int
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """One file as (band, y, x) on ``grid`` (lazy), and where it leaves the grid uncovered (or None)."""
    chunks = {"band": -1, "y": chunk, "x": chunk}
    if grid.same(info.grid):
        da = _open_da(info.path, chunks=chunks)
        outside = None
    else:
        log.info("warping %s onto the grid of %s (%s)", info.path.name, first.name, rs.name)
        single = {v for v in nodata}
        nd = single.pop() if len(single) == 1 else None
        # the source nodata keeps fill out of the resampling kernel; None lets GDAL use the file's own tag
        with rasterio.open(info.path) as src, grid.vrt(src, rs, nodata=nd, src_nodata=nd) as vrt:
            da = _open_da(vrt, chunks=chunks)
        outside = _footprint(grid, info, da.y.values, da.x.values, chunk)
    da = da.drop_vars(["spatial_ref"], errors="ignore")
    return da, outside


def _invalid(group: list[Any]) -> xr.DataArray | None:
    """(y, x) True where a date's pixel is fill: every band nodata, or outside a warped file."""
    missing = [g[3] for g in group]
    all_missing = None
    if all(m is not None for m in missing):
        all_missing = missing[0]
        for m in missing[1:]:
            all_missing = all_missing & m
    out = all_missing
    for g in group:
        if g[4] is not None:
            o = g[4].assign_coords(y=g[1].y, x=g[1].x)
            out = o if out is None else out | o
    return out


def _scale_attrs(per_date: list[list[Any]], stack: str) -> dict[str, list[float]]:
    """Per-band scales/offsets when some are not identity; refused when dates disagree (mixed units)."""
    per = [
        (tuple(s for g in group for s in g[0].scales), tuple(o for g in group for o in g[0].offsets))
        for group in per_date
    ]
    if len(set(per)) > 1:
        shown = {g[0].path.name: (list(g[0].scales), list(g[0].offsets)) for group in per_date for g in group}
        raise RasterError(
            f"the files' scale/offset tags differ between dates {shown}, so their pixel values are in different "
            "units; expected the same scaling on every date. Rescale them to one (e.g. apply the scale: "
            "`gdal_translate -unscale -ot Float32 in.tif out.tif`) before stacking."
        )
    scales, offsets = per[0]
    if all(s == 1 for s in scales) and all(o == 0 for o in offsets):
        return {}
    return {"scales": list(scales), "offsets": list(offsets)}


def _grid_of(like: xr.Dataset | xr.DataArray) -> _Grid:
    crs = like.rio.crs
    if crs is None:
        raise CRSError(
            "`like` has no CRS; expected a cube with a `spatial_ref` coordinate (see validate_cube)."
        )
    return _Grid(crs, _transform_of(like, "like"), like.sizes["y"], like.sizes["x"])


def _transform_of(obj: xr.Dataset | xr.DataArray, what: str) -> Affine:
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
    shown = [_fmt(t) for t in times]
    name = da.name if da.name is not None else "the variable"
    if when is None:
        if times.size == 1:
            return da
        raise RasterError(
            f"{name!r} has {times.size} dates {shown}; a GeoTIFF holds one. Choose one by date or index "
            "(--time 2021-05-01 or --time 0; in code `select_time(da, ...)`)."
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
    t = t.tz_convert(None) if t.tzinfo else t
    # a day (midnight) matches any time on that day; a time of day must match exactly
    hits = np.flatnonzero(times.normalize() == t) if t == t.normalize() else np.flatnonzero(times == t)
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
    transform = _transform_of(da, repr(da.name))
    if transform.e > 0:  # south-up coordinates: write the usual north-up file
        da = da.isel(y=slice(None, None, -1))
        transform = _transform_of(da, repr(da.name))
    out = Path(path)
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
    data = data.copy()
    data.attrs = attrs
    data.encoding = {}
    data = data.rio.write_transform(transform)
    if nodata is not None:
        data = data.rio.write_nodata(nodata, encoded=False)
    return atomic_write(
        out,
        lambda tmp: data.rio.to_raster(tmp, driver="COG", compress=compress, recalc_transform=False),
    )
