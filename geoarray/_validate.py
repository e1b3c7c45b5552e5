"""The cube contract, checked: ``validate_cube`` and ``conform_cube`` (dims by name, grids, time, bands).

A cube is an :class:`xarray.Dataset` whose imagery variable has dims ``("time", "band", "y", "x")`` (checked by
name; :func:`conform_cube` transposes another order), with datetime ``time``, string ``band`` names, evenly spaced
pixel-centre ``y``/``x`` coordinates and the CRS in a ``spatial_ref`` coordinate (so ``ds.rio.crs`` works).
:mod:`geoarray.cube` re-exports these beside ``open_cube`` and ``write_cube``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import xarray as xr

from geoarray._constants import DEFAULT_CHUNK
from geoarray.errors import BandError, CRSError, CubeError, DimensionError, TimeError

__all__ = ["CUBE_DIMS", "check_chunk", "check_regular", "conform_cube", "transposed", "validate_cube"]

log = logging.getLogger(__name__)

CUBE_DIMS: tuple[str, str, str, str] = ("time", "band", "y", "x")


def validate_cube(ds: xr.Dataset, *, var: str = "imagery") -> None:
    """Check that ``ds`` satisfies the cube contract.

    Dims are checked by name: the imagery may hold ``time, band, y, x`` in any order (and ``valid`` its
    ``time, y, x`` in any order); :func:`conform_cube` puts them in the canonical order, which code that
    indexes by position (chips, predict) needs.

    Parameters
    ----------
    ds
        The dataset to check.
    var
        Name of the imagery variable.

    Raises
    ------
    CubeError
        Or one of its subclasses (:class:`DimensionError`, :class:`BandError`, :class:`TimeError`,
        :class:`CRSError`). The message says what was found, what was expected and how to fix it.

    Examples
    --------
    >>> from geoarray.datasets import synthetic_cube
    >>> validate_cube(synthetic_cube(size=64))
    """
    if not isinstance(ds, xr.Dataset):
        hint = " Use `da.to_dataset(name='imagery')`." if isinstance(ds, xr.DataArray) else ""
        raise CubeError(f"expected an xarray.Dataset, got {type(ds).__name__}.{hint}")
    if var not in ds.data_vars:
        raise CubeError(
            f"no imagery variable {var!r}; the dataset has variables {sorted(map(str, ds.data_vars))}. "
            f"Rename yours with `ds.rename({{'<name>': {var!r}}})` or pass `var=`."
        )
    da = ds[var]
    dims = tuple(map(str, da.dims))
    missing = [d for d in CUBE_DIMS if d not in dims]
    if missing:
        raise DimensionError(
            f"{var!r} has dims {dims}; expected {CUBE_DIMS}, missing {tuple(missing)}. "
            + _missing_dim_hint(missing, dims)
        )
    extra = [d for d in dims if d not in CUBE_DIMS]
    if extra:
        raise DimensionError(
            f"{var!r} has dims {dims}; expected exactly {CUBE_DIMS}, found extra {tuple(extra)}. "
            f"Select or stack them away, e.g. `.isel({extra[0]}=0)`."
        )
    empty = [d for d in CUBE_DIMS if da.sizes[d] == 0]
    if empty:
        raise DimensionError(
            f"{var!r} has sizes {dict(da.sizes)}: no {' and no '.join(repr(d) for d in empty)} to hold "
            "imagery; expected at least one date, band and pixel. An empty selection is the usual cause, e.g. "
            "`ds.sel(y=slice(south, north))` on a cube whose y descends (use `slice(north, south)`), or a window "
            "outside the cube's bounds."
        )
    if da.dtype.kind not in "biuf":
        raise CubeError(
            f"{var!r} holds {da.dtype} values; expected real numbers (integer or float pixels). "
            + (
                "Split complex data into real bands first, e.g. amplitude and phase."
                if da.dtype.kind == "c"
                else f"Convert it, e.g. `ds[{var!r}] = ds[{var!r}].astype('float32')`."
            )
        )
    _validate_time(ds)
    _validate_bands(ds)
    for dim in ("y", "x"):
        if dim not in ds.coords:
            raise DimensionError(
                f"dimension {dim!r} has no coordinate; expected pixel-centre coordinates in the CRS. "
                "Assign them from the transform, e.g. with `ds.rio.write_transform(...)` before loading."
            )
        c = np.asarray(ds[dim].values)
        if c.size > 1 and not (np.all(np.diff(c) > 0) or np.all(np.diff(c) < 0)):
            raise DimensionError(
                f"coordinate {dim!r} is not strictly monotonic; sort it with `ds.sortby({dim!r})`."
            )
        check_regular(c, dim)
    if ds.rio.crs is None:
        raise CRSError(
            "the cube has no CRS (no `spatial_ref` coordinate with a crs_wkt); expected one so outputs can be "
            "georeferenced. Set it with `ds = ds.rio.write_crs('EPSG:32633')` (your EPSG code)."
        )
    _validate_optional_vars(ds)


def check_regular(values: Any, dim: str) -> None:
    """Raise :class:`DimensionError` unless the coordinate ``values`` of ``dim`` are evenly spaced.

    A cube has one pixel size per axis: GeoTIFF export, label warping and chip geometry all derive an affine
    transform from the first two coordinates. Steps may differ by 1e-6 of the pixel size, or by the rounding
    of the coordinates' own dtype (float32 coordinates of a UTM northing are only good to ~0.5 m).
    """
    c = np.asarray(values)
    if c.size < 3 or not np.issubdtype(c.dtype, np.number):
        return
    d = np.diff(c.astype(np.float64))
    step = float(np.median(d))
    ulp = float(np.finfo(c.dtype).eps) * float(np.max(np.abs(c))) if c.dtype.kind == "f" else 0.0
    tol = max(1e-6 * abs(step), 4 * ulp)
    off = np.abs(d - step) > tol
    if not off.any():
        return
    i = int(np.argmax(off))
    steps = np.unique(np.round(np.abs(d), 9))
    shown = ", ".join(f"{v:g}" for v in steps[:6]) + (" ..." if steps.size > 6 else "")
    raise DimensionError(
        f"coordinate {dim!r} is not evenly spaced: its steps are {shown} (e.g. {c[i]:g} -> {c[i + 1]:g} is "
        f"{d[i]:g}, the median step is {step:g}); expected one pixel size per axis. This happens when bands or "
        "dates of different resolutions or grids are combined with an outer join. Resample every input onto "
        "one grid before combining: `b = b.rio.reproject_match(a)` (or "
        "`b.rio.reproject(b.rio.crs, resolution=...)`), then `xr.concat(..., join='exact')`; "
        "`geoarray.from_geotiff(files, stack='band')` does this for files, warping each onto the first "
        "file's grid."
    )


#: Canonical dim order of the optional variables (by their set of dims).
_CANONICAL = {
    frozenset(("time", "y", "x")): ("time", "y", "x"),
    frozenset(("class", "y", "x")): ("class", "y", "x"),
    frozenset(("time", "class", "y", "x")): ("time", "class", "y", "x"),
}


def conform_cube(ds: xr.Dataset, *, var: str = "imagery") -> xr.Dataset:
    """Validate a cube and return it with its dims in the canonical order.

    ``imagery`` becomes ``(time, band, y, x)``, ``valid`` ``(time, y, x)``, ``labels`` ``(y, x)``,
    ``(time, y, x)``, ``(class, y, x)`` or ``(time, class, y, x)``, and any other variable with ``y`` and ``x``
    gets them as its last two dims. A cube already in that order is returned as it is (the same object).

    Parameters
    ----------
    ds
        The cube; see :func:`validate_cube`.
    var
        Name of the imagery variable.

    Returns
    -------
    xarray.Dataset
        The cube in canonical dim order.

    Raises
    ------
    CubeError
        As :func:`validate_cube`.

    Notes
    -----
    Transposing is lazy and costs nothing until values are read; then every chunk is transposed in memory
    (one copy of each chunk, about the cost of a memcpy), and a variable opened from a store loses the
    direct-Zarr read path of :mod:`geoarray._source` (its windows go through dask instead: ~7x more overhead
    per chunk). A cube that is read many times is best rewritten once with :func:`write_cube`, which always
    stores the canonical order.

    Examples
    --------
    >>> from geoarray.datasets import synthetic_cube
    >>> conform_cube(synthetic_cube(size=64).transpose("y", "x", "time", "band")).imagery.dims
    ('time', 'band', 'y', 'x')
    """
    validate_cube(ds, var=var)
    return transposed(ds, var=var)


def transposed(ds: xr.Dataset, *, var: str | None) -> xr.Dataset:
    """``ds`` with every variable in canonical dim order (no validation); ``ds`` itself if nothing moves."""
    order: dict[str, tuple[str, ...]] = {}
    for name, v in ds.data_vars.items():
        dims = tuple(map(str, v.dims))
        if var is not None and name == var:
            want: tuple[str, ...] = CUBE_DIMS
        elif frozenset(dims) in _CANONICAL:
            want = _CANONICAL[frozenset(dims)]
        elif {"y", "x"} <= set(dims):
            want = (*(d for d in dims if d not in ("y", "x")), "y", "x")
        else:
            continue
        if dims != want:
            order[str(name)] = want
    if not order:
        return ds
    log.debug("conform_cube: transposing %s", order)
    out = ds.copy()
    for name, want in order.items():
        out[name] = ds[name].transpose(*want)
    return out


def _missing_dim_hint(missing: list[str], dims: tuple[str, ...]) -> str:
    if "time" in missing:
        return "Add a time axis with `ds.expand_dims(time=[np.datetime64('2020-01-01')])`."
    if "band" in missing:
        renames = [d for d in dims if d not in CUBE_DIMS]
        if renames:
            return f"Rename your band axis: `ds.rename({{{renames[0]!r}: 'band'}})`."
        return "Add a band axis with `ds.expand_dims(band=['B1'])`."
    if {"y", "x"} & set(missing):
        return (
            "Rename spatial dims, e.g. `ds.rename({'lat': 'y', 'lon': 'x'})` or `{'rows': 'y', 'cols': 'x'}`."
        )
    return ""


def check_chunk(chunk: Any, *, name: str = "chunk") -> int:
    """Return ``chunk`` as an int, or raise :class:`CubeError` unless it is a whole number of pixels >= 1."""
    ok = isinstance(chunk, (int, np.integer)) and not isinstance(chunk, (bool, np.bool_)) and chunk >= 1
    if not ok:
        raise CubeError(
            f"{name}={chunk!r}; expected a whole number of pixels >= 1 (the chunk size in y and x), "
            f"e.g. {name}={DEFAULT_CHUNK} (the default)."
        )
    return int(chunk)


def _validate_time(ds: xr.Dataset) -> None:
    if "time" not in ds.coords:
        raise TimeError(
            "dimension 'time' has no coordinate; expected datetime64 acquisition dates. "
            "Assign them with `ds.assign_coords(time=pd.to_datetime([...]))`."
        )
    t = ds["time"].values
    first = t.flat[0] if t.dtype == object and t.size else None
    tz = getattr(ds["time"].dtype, "tz", None) or getattr(first, "tzinfo", None)
    if tz is not None:  # pandas' tz-aware dates: pd.to_datetime would keep the zone
        raise TimeError(
            f"coordinate 'time' holds time-zone-aware dates ({tz}); expected datetime64 in UTC without a zone. "
            "Convert it with `ds.assign_coords(time=pd.to_datetime(ds.time.values, utc=True).tz_convert(None))`."
        )
    if not np.issubdtype(t.dtype, np.datetime64):
        raise TimeError(
            f"coordinate 'time' has dtype {t.dtype}; expected datetime64. "
            "Convert it with `ds.assign_coords(time=pd.to_datetime(ds.time.values))`."
        )
    if t.size > 1:
        d = np.diff(t.astype("datetime64[ns]").astype(np.int64))
        if np.any(d <= 0):
            i = int(np.argmax(d <= 0))
            kind = "duplicate" if d[i] == 0 else "non-monotonic"
            raise TimeError(
                f"coordinate 'time' is {kind}: {t[i]} is followed by {t[i + 1]}; expected strictly increasing "
                "dates. Use `ds.sortby('time')`"
                + (
                    ", and merge duplicates with `ds.groupby('time').first()`."
                    if kind == "duplicate"
                    else "."
                )
            )


def _validate_bands(ds: xr.Dataset) -> None:
    if "band" not in ds.coords:
        raise BandError(
            "dimension 'band' has no coordinate; expected band names (str) such as 'B04' or 'red'. "
            "Assign them with `ds.assign_coords(band=['blue', 'green', 'red', ...])`."
        )
    names = [b for b in ds["band"].values.tolist()]
    if not all(isinstance(b, str) for b in names):
        raise BandError(
            f"band coordinate holds {names[:8]}; expected str names. "
            "Assign names with `ds.assign_coords(band=[...])` (e.g. ['B1', 'B2', ...])."
        )
    seen: set[str] = set()
    dups = sorted({b for b in names if b in seen or seen.add(b)})  # type: ignore[func-returns-value]
    if dups:
        raise BandError(
            f"duplicate band names {dups} in {names}; expected unique names. "
            "Rename them, e.g. `ds.assign_coords(band=[...])`, or drop repeats with `ds.drop_duplicates('band')`."
        )


def _validate_optional_vars(ds: xr.Dataset) -> None:
    if "valid" in ds.data_vars:
        v = ds["valid"]
        if set(map(str, v.dims)) != {"time", "y", "x"}:
            raise DimensionError(
                f"'valid' has dims {tuple(v.dims)}; expected ('time', 'y', 'x') (in any order). "
                "Give it one mask per date, e.g. `ds['valid'] = mask.expand_dims(time=ds.time)`."
            )
        if v.dtype != bool:
            raise CubeError(
                f"'valid' has dtype {v.dtype}; expected bool. Use `ds['valid'] = ds.valid.astype(bool)`."
            )
    if "labels" in ds.data_vars:
        lab = ds["labels"]
        # (class, y, x) / (time, class, y, x): 0/1 masks of independent classes (multi-label segmentation)
        allowed = (("y", "x"), ("time", "y", "x"), ("class", "y", "x"), ("time", "class", "y", "x"))
        if frozenset(map(str, lab.dims)) not in {frozenset(a) for a in allowed}:
            raise DimensionError(
                f"'labels' has dims {tuple(lab.dims)}; expected ('y', 'x') or ('time', 'y', 'x') "
                "(or with a 'class' dim before y, x for multi-label masks)."
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise CubeError(
                f"'labels' has dtype {lab.dtype}; expected integer class ids. "
                "Use `ds['labels'] = ds.labels.fillna(nodata).astype('uint8')`."
            )


# ------------------------------------------------------------------------------------------------------
# Zarr
# ------------------------------------------------------------------------------------------------------
