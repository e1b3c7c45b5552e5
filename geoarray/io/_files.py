"""GeoTIFF files as from_geotiff sees them: header facts, dates, band names, nodata and scale tags. Private: used
by :mod:`geoarray.io.geotiff`."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from rasterio.enums import ColorInterp, MaskFlags, Resampling

from geoarray.errors import CRSError, RasterError, TimeError
from geoarray.io._grid import Grid

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


@dataclass(frozen=True)
class FileInfo:
    """What from_geotiff needs to know about one file, read from its header only."""

    path: Path
    count: int
    dtype: np.dtype[Any]
    nodata: tuple[float | None, ...]  # per band, from the file's tags
    descriptions: tuple[str | None, ...]
    tags: dict[str, str]
    grid: Grid
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    # 0-based indexes of the file's data bands: every band but an alpha band, which is a mask, not data
    bands: tuple[int, ...] = ()
    # GDAL's per-dataset mask (an internal/.msk mask or an alpha band) marks fill
    masked: bool = False
    alpha: bool = False  # the file has an alpha band (left out of ``bands``)


def as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def open_checked(path: Path) -> Any:
    if not path.exists():
        hint = ""
        if any(c in str(path) for c in "*?["):
            hint = f" Patterns are not expanded: pass the files, e.g. `sorted(glob.glob({str(path)!r}))`."
        raise RasterError(
            f"GeoTIFF {str(path)!r} does not exist. Check the path (cwd is {os.getcwd()!r}).{hint}"
        )
    if path.is_dir():
        raise RasterError(
            f"{str(path)!r} is a directory; expected a GeoTIFF file. Pass the files in it, e.g. "
            f"`sorted(Path({str(path)!r}).glob('*.tif'))`."
        )
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        hint = ""
        if path.suffix.lower() in _VECTOR_SUFFIXES:
            hint = (
                " It is a vector file: polygons label chips as regions= (fit(task='classification', regions=..., "
                "region_property=...), probe(regions=...)); for a label raster, burn them onto the cube's grid "
                "first, e.g. `gdal_rasterize -a CLASS_ID_FIELD -tr RES RES -te XMIN YMIN XMAX YMAX -ot Byte "
                f"-a_nodata 255 {path.name} labels.tif`."
            )
        raise RasterError(f"{str(path)!r} is not a readable raster ({e}). Expected a GeoTIFF.{hint}") from None


#: file suffixes of vector formats (given where a raster is expected)
_VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".parquet", ".geoparquet")


def read_info(path: Path) -> FileInfo:
    with open_checked(path) as src:
        if src.crs is None and src.gcps[0]:
            raise CRSError(
                f"{str(path)!r} is located by {len(src.gcps[0])} ground control points, not by a CRS and "
                "transform; expected a georeferenced grid. Warp it onto one first: "
                f"`gdalwarp -t_srs EPSG:XXXX {path} warped.tif`."
            )
        if src.crs is None:
            fix = (
                f"`rio edit-info --crs EPSG:XXXX {path}`"
                if path.suffix.lower() in (".tif", ".tiff")
                else f"`gdal_translate -a_srs EPSG:XXXX {path} out.tif` (a CRS kept only as an attribute, "
                "as in some netCDF files, is not read)"
            )
            raise CRSError(f"{str(path)!r} has no CRS; expected a georeferenced GeoTIFF. Set one with {fix}.")
        t = src.transform
        if t.is_identity:
            raise RasterError(
                f"{str(path)!r} has a CRS but no geotransform (pixel = 1 CRS unit at 0, 0); expected a "
                f"georeferenced grid. Set it with `rio edit-info --transform '[...]' {path}`."
            )
        if np.dtype(src.dtypes[0]).kind not in "biuf":
            raise RasterError(
                f"{str(path)!r} holds {src.dtypes[0]} pixels; expected real numbers (integer or float). Split "
                "complex data into real bands first (e.g. amplitude and phase)."
            )
        if src.count == 0:
            raise RasterError(f"{str(path)!r} has no bands; expected a raster with at least one band.")
        if len(set(src.dtypes)) > 1:
            raise RasterError(
                f"{str(path)!r} mixes band types {sorted(set(src.dtypes))}; expected one type for all bands. "
                "Convert it, e.g. `gdal_translate -ot Float32 in.tif out.tif`."
            )
        alpha = [k for k, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha]
        keep = [k for k in range(src.count) if k not in alpha]
        if not keep:
            raise RasterError(
                f"{str(path)!r} holds only an alpha band (a transparency mask, not data); expected at least "
                "one data band."
            )
        masked = bool(alpha) or any(MaskFlags.per_dataset in src.mask_flag_enums[k] for k in keep)
        return FileInfo(
            path=path,
            count=len(keep),
            dtype=np.dtype(src.dtypes[keep[0]]),
            nodata=tuple(src.nodatavals[k] for k in keep),
            descriptions=tuple(src.descriptions[k] for k in keep),
            tags=src.tags(),
            grid=Grid(src.crs, src.transform, src.height, src.width),
            scales=tuple(float(src.scales[k]) for k in keep),
            offsets=tuple(float(src.offsets[k]) for k in keep),
            bands=tuple(keep),
            masked=masked,
            alpha=bool(alpha),
        )


def open_da(source: Any, **kw: Any) -> xr.DataArray:
    """rioxarray.open_rasterio, typed: geoarray always opens one raster as one DataArray."""
    da = rioxarray.open_rasterio(source, lock=False, masked=False, **kw)
    if not isinstance(da, xr.DataArray):  # pragma: no cover - only for multi-subdataset files
        raise RasterError(f"{source!r} holds several subdatasets; expected a plain GeoTIFF.")
    return da


def resampling_of(name: str) -> Resampling:
    try:
        return Resampling[name]
    except KeyError:
        raise RasterError(
            f"resampling={name!r} is unknown; expected one of {[r.name for r in Resampling][:12]} ..."
        ) from None


def date_of(path: Path, tags: dict[str, str]) -> pd.Timestamp | None:
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


def as_times(times: Any) -> list[Any] | None:
    if times is None:
        return None
    if isinstance(times, (str, bytes, dt.date, np.datetime64, pd.Timestamp)):
        return [times]
    return list(times)


def parse_times(times: list[Any]) -> list[pd.Timestamp]:
    try:
        out = [pd.Timestamp(t) for t in times]
    except (ValueError, TypeError) as e:
        raise TimeError(f"times={list(times)!r} are not dates ({e}); expected e.g. '2021-05-01'.") from None
    if any(pd.isna(t) for t in out):
        raise TimeError(f"times={list(times)!r} holds a missing date (NaT); expected one date per file.")
    return _in_range([t.tz_convert(None) if t.tzinfo else t for t in out], "times")


def _in_range(stamps: list[pd.Timestamp], what: str) -> list[pd.Timestamp]:
    """A cube's time is datetime64[ns] (1677-09-22 .. 2262-04-11); outside it numpy wraps silently."""
    far = [str(t) for t in stamps if not pd.Timestamp.min <= t <= pd.Timestamp.max]
    if far:
        raise TimeError(
            f"{what} {far} are outside the dates a cube can hold (1678 .. 2261, datetime64[ns]); expected "
            "acquisition dates. Check for a typo in the year."
        )
    return stamps


def dates_of(infos: list[FileInfo], given: list[Any] | None, stack: str) -> list[pd.Timestamp]:
    """One date per file (stack='time') or the one date of all files (stack='band')."""
    if given is not None:
        return parse_times(given)
    found = [date_of(i.path, i.tags) for i in infos]
    if stack == "time":
        for i, d in zip(infos, found, strict=True):
            if d is None:
                raise TimeError(
                    f"no date for {str(i.path)!r}: no date tag and no YYYYMMDD in the file name. "
                    "Pass `times=[...]` with one date per file."
                )
        return _in_range([d for d in found if d is not None], "the dates in the files' tags")
    days = {d for d in found if d is not None}
    if not days:
        raise TimeError(
            f"no date for the bands {[i.path.name for i in infos]}: no date tag and no YYYYMMDD in the file "
            "names. Pass the date: times=['2020-05-18']."
        )
    if len(days) > 1:
        shown = {i.path.name: None if d is None else fmt_time(d) for i, d in zip(infos, found, strict=True)}
        raise TimeError(
            f"the files stacked as bands of one date have different dates {shown}; stack='band' makes one "
            "date. Pass the date with times=['YYYY-MM-DD'] if they belong together, or use stack='time' for "
            "one multi-band file per date. For one file per band on several dates, build one cube per date "
            "and concatenate them: `xr.concat([from_geotiff(files_of_date, stack='band') for files_of_date in "
            "groups], dim='time', join='exact')`."
        )
    return _in_range([days.pop()], "the date in the files' tags")


def fmt_time(t: pd.Timestamp) -> str:
    return str(t.date()) if t == t.normalize() else str(t)


def refuse_shared_dates(stamps: list[pd.Timestamp], files: list[Path]) -> None:
    for a, b in itertools.pairwise(stamps):
        if a == b:
            same = [f.name for s, f in zip(stamps, files, strict=True) if s == a]
            raise TimeError(
                f"{same} share the date {fmt_time(a)}; with stack='time' (the default) each file is one date. If they "
                "are bands of one date (one file per band), pass stack='band'. If they are tiles of one date, "
                "mosaic them first (e.g. `gdalbuildvrt mosaic.vrt tile1.tif tile2.tif`). If the dates are "
                "wrong, pass times= with one date per file."
                + (
                    " If the files are one file per band on several dates, build one cube per date with "
                    "stack='band' and concatenate them along 'time'."
                    if len(set(stamps)) > 1
                    else ""
                )
            )


def band_names_from_files(infos: list[FileInfo]) -> list[str]:
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


def _common_prefix(texts: list[str]) -> str:
    """The characters all ``texts`` start with (character-wise on purpose: names, not paths)."""
    first = min(texts, key=len)
    for k, ch in enumerate(first):
        if any(t[k] != ch for t in texts):
            return first[:k]
    return first


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_nodata(nodata: Any) -> list[float] | None:
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


def band_nodata(
    info: FileInfo, user: list[float] | None, first_band: int, n_bands: int
) -> list[float | None]:
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


def all_missing(da: xr.DataArray, nodata: list[float | None]) -> xr.DataArray | None:
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


def scale_attrs(per_date: list[list[FileInfo]]) -> dict[str, list[float]]:
    """Per-band scales/offsets (the files of each date, in band order) when some are not identity; refused
    when dates disagree (mixed units)."""
    per = [
        (tuple(s for i in group for s in i.scales), tuple(o for i in group for o in i.offsets))
        for group in per_date
    ]
    if len(set(per)) > 1:
        shown = {i.path.name: (list(i.scales), list(i.offsets)) for group in per_date for i in group}
        raise RasterError(
            f"the files' scale/offset tags differ between dates {shown}, so their pixel values are in different "
            "units; expected the same scaling on every date. Rescale them to one (e.g. apply the scale: "
            "`gdal_translate -unscale -ot Float32 in.tif out.tif`) before stacking."
        )
    scales, offsets = per[0]
    if all(s == 1 for s in scales) and all(o == 0 for o in offsets):
        return {}
    return {"scales": list(scales), "offsets": list(offsets)}
