"""STAC items to a cube: :func:`from_stac` with odc-stac (default) or stackstac (optional engine)."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from geoarray.cube import DEFAULT_CHUNK
from geoarray.errors import STACError

__all__ = ["from_stac", "read_items"]

log = logging.getLogger(__name__)

ItemsLike = Any  # pystac.Item | Iterable[pystac.Item] | pystac.ItemCollection | str | os.PathLike


def read_items(items: ItemsLike) -> list[Any]:
    """Normalise STAC input to a list of ``pystac.Item``.

    Accepts pystac Items (one or many), a ``pystac.ItemCollection``, or a path to an ItemCollection /
    FeatureCollection JSON, a single Item JSON, or a catalog (``catalog.json`` or its folder), whose items
    are collected recursively.
    """
    import pystac

    if isinstance(items, (str, os.PathLike)):
        path = Path(items)
        if path.is_dir():
            path = path / "catalog.json"
        if not path.exists():
            raise STACError(
                f"no STAC file at {str(path)!r}; expected an ItemCollection JSON or a catalog path."
            )
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise STACError(f"{str(path)!r} is not STAC JSON ({e}).") from None
        kind = doc.get("type")
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_file(str(path)))
        if kind == "Feature":
            return [pystac.Item.from_file(str(path))]
        if kind in ("Catalog", "Collection"):
            cat = pystac.read_file(str(path))
            assert isinstance(cat, pystac.Catalog)  # Collection subclasses Catalog
            return list(cat.get_items(recursive=True))
        raise STACError(
            f"{str(path)!r} has type {kind!r}; expected a FeatureCollection (ItemCollection), a Feature (Item), "
            "a Catalog or a Collection."
        )
    if isinstance(items, pystac.Item):
        return [items]
    if isinstance(items, Iterable):
        out = list(items)
        bad = [type(i).__name__ for i in out if not isinstance(i, pystac.Item)]
        if bad:
            raise STACError(
                f"expected pystac.Item objects, got {sorted(set(bad))}; use `pystac.Item.from_dict`."
            )
        return out
    raise STACError(
        f"cannot read STAC items from {type(items).__name__}; expected Items, an ItemCollection or a path."
    )


def _band_names(item: Any) -> set[str]:
    """Names an item answers to: asset keys, plus eo:bands names and common names of single-band assets."""
    names = set(item.assets)
    for key, asset in item.assets.items():
        bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        if len(bands) == 1:
            for field in ("name", "common_name", "eo:common_name"):
                if bands[0].get(field):
                    names.add(str(bands[0][field]))
        for i, _ in enumerate(bands):
            names.add(f"{key}.{i + 1}")
    return names


def _check_bands(items: list[Any], bands: Sequence[str]) -> None:
    for item in items:
        have = _band_names(item)
        missing = [b for b in bands if b not in have]
        if missing:
            raise STACError(
                f"STAC item {item.id!r} lacks the requested band(s) {missing}; it has assets {sorted(item.assets)}. "
                "Request bands every item has, or filter the items first."
            )


def from_stac(
    items: ItemsLike,
    *,
    bands: Sequence[str],
    resolution: float | None = None,
    crs: str | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    engine: Literal["odc", "stackstac"] = "odc",
    chunk: int = DEFAULT_CHUNK,
    dtype: str | None = None,
) -> xr.Dataset:
    """Load STAC items as a lazy cube.

    Parameters
    ----------
    items
        pystac Items, an ItemCollection, or a path to an ItemCollection JSON or a catalog.
    bands
        Asset keys (or band names/common names) to load, in cube order.
    resolution
        Pixel size in units of ``crs``; default: the items' native resolution.
    crs
        Output CRS (e.g. ``"EPSG:32633"``); default: the items' native CRS.
    bbox
        ``(min lon, min lat, max lon, max lat)`` to clip to; default: the union of the items.
    engine
        ``"odc"`` (odc-stac, the default) or ``"stackstac"`` (needs ``pip install geoarray[stackstac]``).
        On the same items both give the same grid and pixel values.
    chunk
        Dask chunk size in ``y`` and ``x``.
    dtype
        Output dtype; default: the assets' own (from ``raster:bands``), else float32.

    Returns
    -------
    xarray.Dataset
        ``imagery(time, band, y, x)``, lazy, with ``spatial_ref``.

    Raises
    ------
    STACError
        No items, an item lacking a requested band, or an unknown engine.

    Examples
    --------
    >>> import geoarray  # doctest: +SKIP
    >>> ds = geoarray.from_stac("catalog/catalog.json", bands=["red", "nir"])  # doctest: +SKIP
    """
    its = read_items(items)
    if not its:
        raise STACError("no STAC items to load (the list is empty); expected at least one pystac.Item.")
    bands = [str(b) for b in bands] if not isinstance(bands, str) else [bands]
    if not bands:
        raise STACError("bands=[] is empty; name the assets to load, e.g. bands=['red', 'nir'].")
    _check_bands(its, bands)
    if engine == "odc":
        da = _load_odc(its, bands, resolution=resolution, crs=crs, bbox=bbox, chunk=chunk, dtype=dtype)
    elif engine == "stackstac":
        da = _load_stackstac(its, bands, resolution=resolution, crs=crs, bbox=bbox, chunk=chunk, dtype=dtype)
    else:
        raise STACError(f"engine={engine!r}; expected 'odc' or 'stackstac'.")
    da = da.assign_coords(
        band=np.asarray(bands, dtype=object), time=da["time"].values.astype("datetime64[ns]")
    )
    da.attrs = {}
    ds = xr.Dataset({"imagery": da})
    return ds.rio.write_crs(ds.rio.crs or da.rio.crs)


def _native_dtype(items: list[Any], bands: Sequence[str]) -> str | None:
    types = set()
    for item in items:
        for b in bands:
            asset = item.assets.get(b)
            rb = (asset.extra_fields.get("raster:bands") if asset is not None else None) or []
            if len(rb) == 1 and rb[0].get("data_type"):
                types.add(str(rb[0]["data_type"]))
    return types.pop() if len(types) == 1 else None


def _load_odc(items: list[Any], bands: list[str], **kw: Any) -> xr.DataArray:
    import odc.stac

    opts: dict[str, Any] = {"chunks": {"x": kw["chunk"], "y": kw["chunk"]}}
    if kw["resolution"] is not None:
        opts["resolution"] = kw["resolution"]
    if kw["crs"] is not None:
        opts["crs"] = kw["crs"]
    if kw["bbox"] is not None:
        opts["bbox"] = kw["bbox"]
    if kw["dtype"] is not None:
        opts["dtype"] = kw["dtype"]
    try:
        ds = odc.stac.load(items, bands=bands, **opts)
    except ValueError as e:
        raise STACError(
            f"odc-stac could not load the items: {e}. Items without projection metadata (the `proj` extension) "
            "need `crs=` and `resolution=`."
        ) from None
    da = ds[bands].to_dataarray("band").transpose("time", "band", "y", "x")
    return da.chunk({"band": -1})


def _stackstac_dicts(items: list[Any]) -> list[dict[str, Any]]:
    """Plain dicts with ``proj:epsg`` next to ``proj:code``: stackstac 0.5 reads only the former.

    Plain dicts also stop stackstac from following remote links.
    """
    out = []
    for item in items:
        d = copy.deepcopy(item.to_dict(transform_hrefs=False))
        for holder in [d["properties"], *d.get("assets", {}).values()]:
            code = holder.get("proj:code")
            if code and "proj:epsg" not in holder and str(code).upper().startswith("EPSG:"):
                holder["proj:epsg"] = int(str(code).split(":")[1])
        for asset in d.get("assets", {}).values():  # resolve relative hrefs against the item file
            href = asset.get("href", "")
            if item.get_self_href() and not ("://" in href or os.path.isabs(href)):
                asset["href"] = str(Path(item.get_self_href()).parent / href)
        out.append(d)
    return out


def _load_stackstac(items: list[Any], bands: list[str], **kw: Any) -> xr.DataArray:
    try:
        import stackstac
    except ImportError:
        raise STACError(
            "engine='stackstac' needs the stackstac package; install it with `pip install geoarray[stackstac]`, "
            "or use the default engine='odc'."
        ) from None
    dtype = np.dtype(kw["dtype"] or _native_dtype(items, bands) or "float32")
    fill: Any = np.nan if np.issubdtype(dtype, np.floating) else dtype.type(0)
    opts: dict[str, Any] = {
        "assets": bands,
        "chunksize": (1, -1, kw["chunk"], kw["chunk"]),
        "dtype": dtype,
        "fill_value": fill,
        "rescale": False,
        "xy_coords": "center",
        "properties": False,
        "band_coords": False,
    }
    if kw["resolution"] is not None:
        opts["resolution"] = kw["resolution"]
    if kw["crs"] is not None:
        from pyproj import CRS

        opts["epsg"] = CRS.from_user_input(kw["crs"]).to_epsg()
    if kw["bbox"] is not None:
        opts["bounds_latlon"] = kw["bbox"]
    try:
        da = stackstac.stack(_stackstac_dicts(items), **opts)
    except ValueError as e:
        raise STACError(f"stackstac could not load the items: {e}") from None
    keep = {"time", "band", "y", "x"}
    da = da.drop_vars([c for c in da.coords if c not in keep])
    epsg = da.attrs.get("crs") or (f"EPSG:{opts['epsg']}" if "epsg" in opts else None)
    if da.sizes["time"] != len(np.unique(da["time"].values)):
        # several items at one timestamp (tiles of one pass): mosaic them, like odc-stac's groupby="time"
        da = da.groupby("time").map(stackstac.mosaic)
    return da.rio.write_crs(epsg)
