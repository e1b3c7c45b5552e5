"""Opening a Zarr store, local or in object storage, with the checks that name what is wrong with a path.

Split from :mod:`geoarray.cube` (which re-exports ``_open_zarr``): this is the part that asks the filesystem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import xarray as xr

from geoarray._source import naming_chunks
from geoarray._storage import Location, location
from geoarray.errors import StoreError, StoreNotFoundError

log = logging.getLogger(__name__)


def _check_store_exists(store: str | os.PathLike[str]) -> Path:
    path = Path(store)
    if not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        near = sorted(p.name for p in parent.glob("*.zarr"))[:5] if parent.is_dir() else []
        raise StoreNotFoundError(
            f"no Zarr store at {str(path)!r}."
            + (f" Stores next to it: {near}." if near else "")
            + " Create one with `geoarray.write_cube(ds, path)` or `geoarray ingest`."
        )
    return path


def _is_zarr(path: Path) -> bool:
    """Whether a directory is a Zarr store (v3 or v2 metadata at its root)."""
    return any((path / f).is_file() for f in ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"))


def _not_a_directory(path: Path) -> str:
    hint = ""
    if path.suffix.lower() in (".tif", ".tiff", ".vrt", ".jp2", ".nc"):
        hint = (
            " It looks like a raster: build a cube from it with `geoarray.from_geotiff(path, times=[...])` "
            "(or `geoarray ingest geotiff`), then `geoarray.write_cube(cube, 'name.zarr')`."
        )
    return f"{str(path)!r} is a file, not a Zarr store (a Zarr store is a directory).{hint}"


def _check_remote_store(loc: Location) -> None:
    """The checks of a local store (exists, is a folder, is a Zarr group), asked of an object store."""
    if loc.isfile():
        raise StoreError(f"{loc.url!r} is an object (a file), not a Zarr store (a prefix holding zarr.json).")
    held = loc.listdir()
    if not held:
        raise StoreNotFoundError(
            f"no Zarr store at {loc.url!r} (nothing under that prefix). Check the URL and storage_options, or "
            "create one with `geoarray.write_cube(ds, url, storage_options=...)`."
        )
    if not {"zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"} & set(held):
        raise StoreError(
            f"{loc.url!r} holds objects but is not a Zarr store (no zarr.json or .zgroup under it; it holds "
            f"{held[:5]}{' ...' if len(held) > 5 else ''}). Check the URL: a store's own prefix, not its parent."
        )


def _open_zarr(
    store: str | os.PathLike[str] | Location, *, chunks: Any = None, storage_options: dict[str, Any] | None = None
) -> xr.Dataset:
    loc = location(store, storage_options)
    if loc.remote:
        _check_remote_store(loc)
        return _open_checked(loc.url, loc.url, chunks, loc.zarr_kwargs())
    if isinstance(store, Location) or str(store).startswith("file://"):
        store = loc.url  # a file:// URL is its local path (Path() would read it as the folder 'file:')
    path = _check_store_exists(store)
    if not path.is_dir():
        raise StoreError(_not_a_directory(path))
    if not _is_zarr(path):
        held = sorted(p.name for p in path.iterdir())
        raise StoreError(
            f"{str(path)!r} is a directory but not a Zarr store (no zarr.json or .zgroup in it; "
            + (f"it holds {held[:5]}{' ...' if len(held) > 5 else ''}" if held else "it is empty")
            + "). Expected a store written by `geoarray.write_cube` or `xarray.Dataset.to_zarr`; "
            "check the path (a store's own folder, not its parent or one of its variables)."
        )
    if (path / ".zarray").is_file() or _zarr_node_type(path) == "array":
        raise StoreError(
            f"{str(path)!r} is a single Zarr array, not a group of variables; expected a cube store written "
            "by `geoarray.write_cube` (check the path: a variable's folder inside a store is an array)."
        )
    return _open_checked(path, str(path), chunks, {})


def _open_checked(target: Any, where: str, chunks: Any, extra: dict[str, Any]) -> xr.Dataset:
    kw: dict[str, Any] = {"decode_coords": "all", "chunks": {} if chunks is None else chunks, **extra}
    # arrays opened here name the chunk they cannot decode (store, variable, chunk), also on dask workers
    with naming_chunks():
        try:  # v3 stores are not consolidated: the fast path first
            return xr.open_zarr(target, consolidated=False, **kw)
        except Exception as e:  # zarr raises several unrelated types for "not a store"
            first = e
        try:  # v2 stores may be consolidated
            return xr.open_zarr(target, consolidated=True, **kw)
        except Exception as e:  # report the first failure, the one about the v3 layout
            log.debug("opening %s as a consolidated v2 store failed too: %s", where, e)
    raise StoreError(
        f"{where!r} is not a readable Zarr store ({type(first).__name__}: {first}). "
        "Expected a directory written by `geoarray.write_cube` or `xarray.Dataset.to_zarr`."
    )


def _zarr_node_type(path: Path) -> str | None:
    import json

    try:
        return str(json.loads((path / "zarr.json").read_text()).get("node_type"))
    except (OSError, ValueError, AttributeError):
        return None
