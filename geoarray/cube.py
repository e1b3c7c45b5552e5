"""The cube contract: validate, open and write ``imagery(time, band, y, x)`` cubes in Zarr.

A cube is an :class:`xarray.Dataset` whose imagery variable has dims ``("time", "band", "y", "x")`` (checked by
name; :func:`conform_cube` transposes another order), with datetime ``time``, string ``band`` names, evenly spaced
pixel-centre ``y``/``x`` coordinates and the CRS in a ``spatial_ref`` coordinate (so ``ds.rio.crs`` works).
The checks live in :mod:`geoarray._validate`; this module opens and writes stores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from zarr.codecs import ZstdCodec

from geoarray._constants import DEFAULT_CHUNK
from geoarray._progress import compute_with_progress
from geoarray._storage import Location, location
from geoarray._validate import CUBE_DIMS, check_chunk, check_regular, conform_cube, transposed, validate_cube
from geoarray._zarr_open import _is_zarr, _not_a_directory, _open_zarr
from geoarray.errors import CubeError, StoreError, StoreExistsError

__all__ = [
    "CUBE_DIMS",
    "DEFAULT_CHUNK",
    "check_chunk",
    "check_regular",
    "conform_cube",
    "open_cube",
    "storage_chunks",
    "validate_cube",
    "write_cube",
]

log = logging.getLogger(__name__)

#: Dims that keep one chunk for their whole length in storage (small, categorical axes).
_WHOLE_DIMS = ("band", "class", "feature")


def open_cube(
    store: str | os.PathLike[str],
    *,
    var: str = "imagery",
    chunks: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open a Zarr cube lazily (dask-backed) and validate it.

    Parameters
    ----------
    store
        Path of a Zarr store (v3 or v2), or an fsspec URL such as ``"s3://bucket/cube.zarr"``.
    var
        Name of the imagery variable.
    chunks
        Dask chunks; the default (None) uses the store's own chunks, so one task reads one Zarr chunk.
    storage_options
        fsspec options for a URL (credentials, ``client_kwargs={"endpoint_url": ...}``); they travel with the
        cube's tasks to dask workers. Refused for a local path.

    Returns
    -------
    xarray.Dataset
        The cube, lazy, in canonical dim order (a store written in another order is transposed on the way in;
        see :func:`conform_cube` for the cost); ``ds.rio.crs`` is set.

    Raises
    ------
    StoreNotFoundError
        The path does not exist.
    StoreError
        The path is not a Zarr store, or the store is not a cube (the message says why).

    Examples
    --------
    >>> import geoarray, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "cube.zarr")
    >>> geoarray.write_cube(geoarray.datasets.synthetic_cube(size=64), path)
    ['imagery', 'labels', 'valid']
    >>> geoarray.open_cube(path).imagery.dims
    ('time', 'band', 'y', 'x')
    """
    loc = location(store, storage_options)
    ds = _open_zarr(loc if loc.remote else store, chunks=chunks)
    # Small labelling coords (band names, per-date sensor) come back as lazy StringDType arrays; make them
    # plain in-memory object arrays so comparisons and `.sel` behave as on the cube that was written.
    small = {
        str(name): np.asarray([str(v) for v in np.asarray(c.values).ravel()], dtype=object).reshape(c.shape)
        for name, c in ds.coords.items()
        if c.dtype.kind in "OUST" and c.ndim == 1
    }
    ds = ds.assign_coords({k: (ds[k].dims, v) for k, v in small.items()})
    try:
        validate_cube(ds, var=var)
    except CubeError as e:
        raise StoreError(f"the Zarr store {str(store)!r} is not a geoarray cube: {e}") from None
    from geoarray._source import tag

    # tag before transposing: a transposed variable gets a new dask name, so it is (rightly) not read directly
    tag(ds, loc if loc.remote else loc.url)
    return transposed(ds, var=var)


def storage_chunks(da: xr.DataArray, *, chunk: int = DEFAULT_CHUNK) -> dict[Hashable, int]:
    """The on-disk chunking geoarray uses for a variable.

    One chunk per ``time`` step, all of ``band``/``class``/``feature`` in one chunk, and ``chunk`` pixels in
    ``y`` and ``x``. Any other dim is kept whole.
    """
    out: dict[Hashable, int] = {}
    for d, n in da.sizes.items():
        if d == "time":
            out[d] = 1
        elif d in ("y", "x"):
            out[d] = min(chunk, n)
        else:
            out[d] = n
    return out


def _encoding_for(ds: xr.Dataset, chunk: int) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    for name, da in ds.data_vars.items():
        if not {"y", "x"} <= set(map(str, da.dims)):
            continue
        sc = storage_chunks(da, chunk=chunk)
        # zstd's own checksum: a damaged chunk is refused (and named) instead of decoding to wrong values
        enc[str(name)] = {"chunks": tuple(sc[d] for d in da.dims), "compressors": [ZstdCodec(level=3, checksum=True)]}
    return enc


def _prepare_for_zarr(ds: xr.Dataset, chunk: int) -> xr.Dataset:
    ds = ds.copy()
    for name in list(ds.variables):
        # Encodings inherited from a source file (GeoTIFF block sizes, old zarr chunks/codecs) conflict with
        # the storage layout we choose; drop them and keep only what describes the values.
        keep = {
            k: v for k, v in ds[name].encoding.items() if k in ("dtype", "_FillValue", "units", "calendar")
        }
        ds[name].encoding = keep
        attrs = ds[name].attrs
        # CF packing attributes left by a source raster (rioxarray copies them into attrs) make readers
        # decode the stored values to float64: meaningless on bool masks, a no-op when scale 1 and offset 0.
        identity = np.all(np.asarray(attrs.get("scale_factor", 1)) == 1) and np.all(
            np.asarray(attrs.get("add_offset", 0)) == 0
        )
        if ds[name].dtype == bool or identity:
            ds[name].attrs = {k: v for k, v in attrs.items() if k not in ("scale_factor", "add_offset")}
        if ds[name].dtype == bool:
            ds[name].attrs.pop("_FillValue", None)
        else:
            ds[name].attrs = _raw_attrs(ds[name])
    for name, c in ds.coords.items():
        if c.dtype.kind in "UST" and c.ndim == 1:  # fixed-width unicode triggers zarr v3 spec warnings
            ds = ds.assign_coords({name: (c.dims, c.values.astype(object))})
    for name, da in ds.data_vars.items():
        if {"y", "x"} <= set(map(str, da.dims)):
            # dask chunks must equal the zarr chunks, or parallel writes could race on a shared chunk
            ds[name] = da.chunk(storage_chunks(da, chunk=chunk))
    return ds


def _raw_attrs(da: xr.DataArray) -> dict[str, Any]:
    """A variable's attrs with rioxarray's CF packing attrs turned into geoarray's own (not applied).

    ``rioxarray.open_rasterio`` puts a raster's nodata in ``attrs["_FillValue"]`` and its scale/offset in
    ``attrs["scale_factor"]``/``["add_offset"]`` on raw pixels. Written as they are, xarray decodes them on
    reading: fill becomes NaN and the pixels float, or float64 physical values, so the cube that comes back is
    not the one written. Kept as ``nodata``/``scales``/``offsets`` (as from_geotiff records them), the stored
    pixels are the raw ones, in their own dtype.
    """
    attrs = dict(da.attrs)
    if "_FillValue" in attrs:
        fill = attrs.pop("_FillValue")
        v = np.asarray(fill).ravel()
        if v.size == 1 and "nodata" not in attrs:
            attrs["nodata"] = v[0].item()
    if "scale_factor" in attrs or "add_offset" in attrs:
        scale, offset = attrs.pop("scale_factor", 1.0), attrs.pop("add_offset", 0.0)
        n = da.sizes.get("band", 1)
        per = [np.broadcast_to(np.asarray(x, dtype=np.float64).ravel(), (n,)) for x in (scale, offset)]
        if "scales" not in attrs:
            attrs["scales"], attrs["offsets"] = [float(x) for x in per[0]], [float(x) for x in per[1]]
    return attrs


def _grid_mismatch(existing: xr.Dataset, new: xr.Dataset) -> str | None:
    for dim in ("time", "y", "x"):
        if dim in new.dims and dim in existing.dims:
            if existing.sizes[dim] != new.sizes[dim]:
                return f"{dim!r} has {new.sizes[dim]} steps but the store has {existing.sizes[dim]}"
            if dim in new.coords and dim in existing.coords:
                a, b = np.asarray(existing[dim].values), np.asarray(new[dim].values)
                same = np.array_equal(a, b) if a.dtype.kind == "M" else np.allclose(a, b, rtol=0, atol=1e-6)
                if not same:
                    return f"{dim!r} coordinates differ from the store's"
    if existing.rio.crs is not None and new.rio.crs is not None and existing.rio.crs != new.rio.crs:
        return f"CRS {new.rio.crs} differs from the store's {existing.rio.crs}"
    return None


def write_cube(
    ds: xr.Dataset,
    store: str | os.PathLike[str],
    *,
    mode: Literal["w-", "w", "a"] = "w-",
    var: str = "imagery",
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Write a cube to a Zarr (v3) store.

    Parameters
    ----------
    ds
        The cube, with its dims in any order (it is stored in canonical order, see :func:`conform_cube`).
        With ``mode="a"`` it may also be a Dataset holding only new variables on the store's grid.
    store
        Path of the Zarr store, or an fsspec URL such as ``"s3://bucket/cube.zarr"``.
    mode
        ``"w-"`` (default) creates the store and fails if it exists; ``"w"`` replaces it; ``"a"`` adds to an
        existing cube only the variables it lacks, and never rewrites the ones it has.
    var
        Name of the imagery variable (validated in modes ``"w-"`` and ``"w"``).
    chunk
        Chunk size in ``y`` and ``x``; ``time`` is chunked by 1 and ``band`` is kept whole.
    progress
        Show a progress bar while writing.
    storage_options
        fsspec options for a URL ``store`` (credentials, ``client_kwargs={"endpoint_url": ...}``).

    Returns
    -------
    list of str
        The variables written.

    Raises
    ------
    CubeError
        ``ds`` is not a valid cube (modes ``"w-"``/``"w"``), or ``chunk`` is not a whole number >= 1.
    StoreExistsError
        ``mode="w-"`` and the store exists; or the path is a regular file; or ``mode="w"`` and the path is a
        non-empty directory that is not a Zarr store (it is never deleted).
    StoreError
        ``mode="a"`` and the store is missing, is not a cube, or the new variables don't match its grid.

    Notes
    -----
    ``xarray.Dataset.to_zarr(mode="a")`` does not check dim sizes, so a variable on another grid would be
    appended silently and break later opens; ``write_cube`` checks ``time``/``y``/``x`` and the CRS first.

    Examples
    --------
    >>> import geoarray, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "cube.zarr")
    >>> geoarray.write_cube(geoarray.datasets.synthetic_cube(size=64), path)
    ['imagery', 'labels', 'valid']
    """
    if mode not in ("w-", "w", "a"):
        raise StoreError(
            f"mode={mode!r}; expected one of 'w-' (create), 'w' (overwrite) or 'a' (add variables)."
        )
    chunk = check_chunk(chunk)
    if not isinstance(ds, xr.Dataset):
        validate_cube(ds, var=var)  # raises, with the to_dataset hint
    loc = location(store, storage_options)
    if loc.remote:
        return _write_remote(ds, loc, mode=mode, var=var, chunk=chunk, progress=progress)
    path = Path(loc.url) if str(store).startswith("file://") else Path(store)  # not the local folder 'file:'
    if path.exists() and not path.is_dir():
        other = (
            path.with_suffix(".zarr") if path.suffix != ".zarr" else path.with_name(f"{path.stem}-cube.zarr")
        )
        raise (StoreError if mode == "a" else StoreExistsError)(
            _not_a_directory(path) + " write_cube writes a directory; choose another path, e.g. "
            f"{str(other)!r}, or remove the file first."
        )
    if mode == "a":
        return _append(ds, path, var=var, chunk=chunk, progress=progress)
    ds = conform_cube(ds, var=var)
    if mode == "w-" and path.exists():
        raise StoreExistsError(
            f"{str(path)!r} already exists and mode='w-' never overwrites. "
            "Pass mode='w' to replace it, or mode='a' to add new variables to it."
        )
    if mode == "w" and path.is_dir() and not _is_zarr(path) and any(path.iterdir()):
        held = sorted(p.name for p in path.iterdir())
        raise StoreExistsError(
            f"{str(path)!r} is a directory that is not a Zarr store (it holds {held[:5]}"
            f"{' ...' if len(held) > 5 else ''}); mode='w' replaces only Zarr stores, so nothing was deleted. "
            f"Write to a new path, e.g. {str(path / 'cube.zarr')!r}."
        )
    prepared = _prepare_for_zarr(ds, chunk)
    job = prepared.to_zarr(
        path,
        mode=mode,
        zarr_format=3,
        consolidated=False,
        encoding=_encoding_for(prepared, chunk),
        compute=False,
    )
    compute_with_progress(job, enabled=progress, desc=f"writing {path.name}")
    return sorted(map(str, prepared.data_vars))


def _write_remote(
    ds: xr.Dataset, loc: Location, *, mode: Literal["w-", "w", "a"], var: str, chunk: int, progress: bool
) -> list[str]:
    """write_cube into an object store: the local checks, asked of the prefix (there are no directories)."""
    loc.check_bucket()
    if loc.isfile():
        raise (StoreError if mode == "a" else StoreExistsError)(
            f"{loc.url!r} is an object (a file), not a Zarr store; write_cube writes a prefix of objects. "
            f"Choose another URL, e.g. {loc.url + '.zarr'!r}."
        )
    if mode == "a":
        return _append(ds, loc, var=var, chunk=chunk, progress=progress)
    ds = conform_cube(ds, var=var)
    held = loc.listdir()
    if mode == "w-" and held:
        raise StoreExistsError(
            f"{loc.url!r} already exists (it holds {held[:5]}) and mode='w-' never overwrites. "
            "Pass mode='w' to replace it, or mode='a' to add new variables to it."
        )
    if mode == "w" and held and "zarr.json" not in held and ".zgroup" not in held:
        raise StoreExistsError(
            f"{loc.url!r} holds objects but is not a Zarr store (it holds {held[:5]}); mode='w' replaces only "
            f"Zarr stores, so nothing was deleted. Write to a new prefix, e.g. {loc.url + '/cube.zarr'!r}."
        )
    prepared = _prepare_for_zarr(ds, chunk)
    job = prepared.to_zarr(
        loc.url,
        mode=mode,
        zarr_format=3,
        consolidated=False,
        encoding=_encoding_for(prepared, chunk),
        compute=False,
        **loc.zarr_kwargs(),
    )
    compute_with_progress(job, enabled=progress, desc=f"writing {loc.name}")
    return sorted(map(str, prepared.data_vars))


def _append(ds: xr.Dataset, path: Path | Location, *, var: str, chunk: int, progress: bool) -> list[str]:
    existing = _open_zarr(path)
    if var not in existing.data_vars:
        raise StoreError(
            f"the Zarr store {str(path)!r} has no imagery variable {var!r} (it has "
            f"{sorted(map(str, existing.data_vars))}); mode='a' adds variables to a geoarray cube. Write the cube "
            "first with `write_cube(cube, store)`, or pass `var=` if its imagery has another name."
        )
    new_vars = [str(v) for v in ds.data_vars if v not in existing.variables]
    skipped = [str(v) for v in ds.data_vars if v in existing.variables]
    if skipped:
        log.info("write_cube(mode='a'): %s already in %s; left unchanged", skipped, path)
    if not new_vars:
        return []
    new = transposed(ds[new_vars], var=None)
    problem = _grid_mismatch(existing, new)
    if problem:
        raise StoreError(
            f"cannot add {new_vars} to {str(path)!r}: {problem}. "
            "Expected variables on the store's grid; build them from `open_cube(store)` "
            "or reproject with `.rio.reproject_match(open_cube(store))`."
        )
    for name in new_vars:
        if "spatial_ref" in new.coords:
            new[name].attrs.pop("grid_mapping", None)
            new[name].encoding["grid_mapping"] = "spatial_ref"
    # Only the new variables are written: coordinates the store already has are dropped from the write so
    # their bytes are never touched.
    drop = [c for c in new.coords if c in existing.variables]
    new = new.drop_vars(drop)
    new.attrs = dict(existing.attrs)  # xarray rewrites the group attrs: keep them byte-identical
    prepared = _prepare_for_zarr(new, chunk)
    for name in new_vars:
        if "spatial_ref" in drop and {"y", "x"} <= set(map(str, prepared[name].dims)):
            prepared[name].encoding["grid_mapping"] = "spatial_ref"
    extra = path.zarr_kwargs() if isinstance(path, Location) else {}
    job = prepared.to_zarr(
        path.url if isinstance(path, Location) else path,
        mode="a",
        zarr_format=3,
        consolidated=False,
        encoding=_encoding_for(prepared, chunk),
        compute=False,
        **extra,
    )
    compute_with_progress(job, enabled=progress, desc=f"adding {', '.join(new_vars)}")
    return sorted(new_vars)
