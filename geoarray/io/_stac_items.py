"""STAC input for :func:`geoarray.io.stac.from_stac`: read items, resolve band names, check the assets.

Everything here runs before any pixel is read. The result is a :class:`Plan`: one normalised copy of each item
(plain dict) whose assets are exactly the requested bands, under private keys, with absolute hrefs and the
projection fields both engines read. Both engines load from these copies, so they see the same input.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import numpy as np

from geoarray.errors import STACError

__all__ = ["Plan", "check_bbox", "plan_load", "read_items"]

log = logging.getLogger(__name__)

ItemsLike = Any  # pystac.Item | Iterable[pystac.Item] | pystac.ItemCollection | dict | str | os.PathLike

_PROJ_KEYS = (
    "proj:epsg",
    "proj:code",
    "proj:wkt2",
    "proj:projjson",
    "proj:shape",
    "proj:transform",
    "proj:bbox",
)
_PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
_RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
_RASTER_EXT = {"tif", "tiff", "jp2", "vrt", "img", "nc", "h5", "hdf", "zarr"}
_PAS = (
    "Pass pystac Items, a pystac.ItemCollection (e.g. `pystac_client` search `.item_collection()`), or the "
    "path of an ItemCollection / search result saved to disk (a FeatureCollection JSON)."
)
# GDAL network options for the probe: fail in seconds, not minutes, on an unreachable host
_PROBE_ENV = {
    "GDAL_HTTP_CONNECTTIMEOUT": "5",
    "GDAL_HTTP_TIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


# -- reading ------------------------------------------------------------------------------------------------
def read_items(items: ItemsLike) -> list[Any]:
    """Normalise STAC input to a list of ``pystac.Item``.

    Accepts pystac Items (one or many), a ``pystac.ItemCollection``, STAC dicts (Item, FeatureCollection), or
    the path of an ItemCollection / search-result JSON, an Item JSON, or a local catalog (``catalog.json``,
    ``collection.json`` or its folder), whose items are collected recursively.

    Raises
    ------
    STACError
        A path that is missing or not STAC JSON, a Collection without items, or objects that are not Items.
    """
    import pystac

    if isinstance(items, (str, os.PathLike)):
        return _read_path(items)
    if isinstance(items, dict):
        return _from_doc(items, "the dict passed as items")
    if isinstance(items, pystac.Item):
        return [items]
    if isinstance(items, pystac.Catalog):  # a Collection is a Catalog
        return _catalog_items(items, f"the {type(items).__name__} {items.id!r}")
    if isinstance(items, Iterable) and not isinstance(items, (bytes, str)):
        out = []
        for i in items:
            if isinstance(i, pystac.Item):
                out.append(i)
            elif isinstance(i, dict) and i.get("type") == "Feature":
                out.extend(_from_doc(i, "a dict in items"))
            else:
                kind = i.get("type") if isinstance(i, dict) else type(i).__name__
                raise STACError(
                    f"items holds a {kind!r}; expected pystac.Item objects (or STAC Item dicts). {_PAS}"
                )
        return out
    raise STACError(f"cannot read STAC items from a {type(items).__name__}. {_PAS}")


def _read_path(items: str | os.PathLike[str]) -> list[Any]:
    text = str(items)
    if urlparse(text).scheme in ("http", "https", "s3", "gs", "az"):
        raise STACError(
            f"{text!r} is a URL; from_stac reads local STAC files only. Open remote STAC with pystac or "
            f"pystac_client (e.g. `pystac_client.Client.open(url).search(...).item_collection()`). {_PAS}"
        )
    path = Path(items)
    if path.is_dir():
        found = [path / n for n in ("catalog.json", "collection.json") if (path / n).exists()]
        if not found:
            raise STACError(
                f"the folder {str(path)!r} has no catalog.json or collection.json; pass the JSON file itself. "
                f"{_PAS}"
            )
        path = found[0]
    if not path.exists():
        raise STACError(f"no STAC file at {str(path)!r}; expected an ItemCollection JSON or a catalog path.")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        hint = (
            " It is a TIFF: load GeoTIFFs with `geoarray.from_geotiff`."
            if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
            else ""
        )
        raise STACError(f"{str(path)!r} is not STAC JSON ({type(e).__name__}: {e}).{hint} {_PAS}") from None
    return _from_doc(doc, repr(str(path)), path=path)


def _from_doc(doc: Any, where: str, path: Path | None = None) -> list[Any]:
    """Items from one parsed JSON document (dict or list of Item dicts)."""
    import pystac

    if isinstance(doc, list):
        if all(isinstance(d, dict) and d.get("type") == "Feature" for d in doc):
            return [_item_from_dict(d, where) for d in doc]
        raise STACError(f"{where} is a JSON list that is not all STAC Items. {_PAS}")
    if not isinstance(doc, dict):
        raise STACError(f"{where} holds a JSON {type(doc).__name__}, not a STAC object. {_PAS}")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise STACError(f"{where} is a FeatureCollection without a 'features' list. {_PAS}")
        return [_item_from_dict(f, where, self_href=str(path) if path else None) for f in feats]
    if kind == "Feature":
        return [_item_from_dict(doc, where, self_href=str(path) if path else None)]
    if kind in ("Catalog", "Collection"):
        try:
            if path is not None:
                cat = pystac.read_file(str(path))
            else:
                cat = (pystac.Collection if kind == "Collection" else pystac.Catalog).from_dict(doc)
        except Exception as e:  # pystac raises many kinds on malformed catalogs
            raise STACError(f"{where} is a malformed STAC {kind}: {type(e).__name__}: {e}") from None
        if not isinstance(cat, pystac.Catalog):
            raise STACError(f"{where} has type {kind!r} but pystac reads it as {type(cat).__name__}.")
        return _catalog_items(cat, f"{where} (STAC {kind} {doc.get('id')!r})")
    raise STACError(
        f"{where} has type {kind!r}; expected a FeatureCollection (ItemCollection), a Feature (Item), "
        "a Catalog or a Collection."
    )


def _item_from_dict(d: Any, where: str, self_href: str | None = None) -> Any:
    import pystac

    if not isinstance(d, dict) or d.get("type") != "Feature":
        raise STACError(f"{where} holds a feature that is not a STAC Item (type {d.get('type')!r}). {_PAS}")
    ident = d.get("id", "?")
    if "stac_version" not in d or "assets" not in d:
        raise STACError(
            f"feature {ident!r} in {where} is plain GeoJSON, not a STAC Item (no stac_version/assets): it "
            f"describes an area, not data to load. {_PAS}"
        )
    try:
        item = pystac.Item.from_dict(d, preserve_dict=True)
    except Exception as e:  # pystac.errors.STACError, KeyError, ValueError on malformed items
        raise STACError(f"STAC item {ident!r} in {where} is malformed: {type(e).__name__}: {e}") from None
    if (
        self_href
    ):  # the file it was read from, as pystac.Item.from_file does: relative hrefs resolve against it
        item.set_self_href(str(Path(self_href).resolve()))
    return item


def _link_href(link: Any) -> str:
    """A link's href as written (``link.href`` would resolve it, fetching a remote root)."""
    t = link.target
    return t if isinstance(t, str) else str(t.get_self_href())


def _catalog_items(cat: Any, where: str) -> list[Any]:
    links = [link for link in cat.links if link.rel in ("child", "item")]
    remote = [_link_href(link) for link in links if _is_remote(_link_href(link))]
    if remote:
        raise STACError(
            f"{where} links to remote children/items (e.g. {remote[0]!r}); from_stac does not crawl remote "
            f"catalogs. Search them with pystac_client and pass the result. {_PAS}"
        )
    if not links:
        api = [_link_href(link) for link in cat.links if link.rel == "items"]
        kind = type(cat).__name__
        raise STACError(
            f"{where} is a {kind} with no items: a {kind} describes items, it does not list them"
            + (f" (its items are served by {api[0]!r})" if api else "")
            + f". {_PAS}"
        )
    root = cat.get_single_link("root")
    if root is not None and _is_remote(_link_href(root)):
        cat = cat.clone()
        cat.set_root(cat)  # pystac would fetch a remote root while walking a local catalog
    try:
        items = list(cat.get_items(recursive=True))
    except Exception as e:  # a broken link in a local catalog
        raise STACError(f"{where} could not be read: {type(e).__name__}: {e}") from None
    if not items:
        raise STACError(f"{where} links to no items (its children hold none). {_PAS}")
    return items


# -- band names ---------------------------------------------------------------------------------------------
def _is_raster(asset: dict[str, Any]) -> bool:
    """odc-stac's heuristic: an image media type (not a thumbnail), a data role, or a raster file extension."""
    roles = set(asset.get("roles") or [])
    media = str(asset.get("type") or "").split(";")[0].strip().lower()
    if media:
        if media.startswith("image/"):
            return not roles & {"thumbnail", "overview"}
        return media in (
            "application/x-hdf5",
            "application/x-netcdf",
            "application/netcdf",
            "application/x-zarr",
        )
    if "data" in roles:
        return True
    return str(asset.get("href", "")).split("?")[0].rsplit(".", 1)[-1].lower() in _RASTER_EXT


def _asset_band_docs(props: dict[str, Any], asset: dict[str, Any]) -> list[dict[str, Any]]:
    """Band descriptions of an asset: STAC 1.1 ``bands`` or ``eo:bands``.

    Old (0.9 / 1.0-beta) items such as USGS Collection 2 list band *indices* into the item's ``eo:bands``
    (``"eo:bands": [3]``), not objects: resolve them.
    """
    raw = asset.get("bands") or asset.get("eo:bands") or []
    if not isinstance(raw, list):
        return []
    top = props.get("eo:bands") or props.get("bands") or []
    out: list[dict[str, Any]] = []
    for b in raw:
        if isinstance(b, dict):
            out.append(b)
        elif (
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(top) and isinstance(top[b], dict)
        ):
            out.append(top[b])
        else:
            out.append({})
    return out


def _metadata_count(props: dict[str, Any], asset: dict[str, Any]) -> int | None:
    """Bands in an asset per its metadata; None if the metadata does not say."""
    for key in ("raster:bands", "bands", "eo:bands"):
        v = asset.get(key)
        if isinstance(v, list) and v:
            return len(v)
    return None


@dataclass(frozen=True)
class Source:
    """Where one requested band comes from in one item."""

    asset: str  # the item's asset key
    index: int  # 1-based band in that asset
    count: int | None  # bands in the asset per metadata (None: not said)
    explicit: bool  # asked for as "asset.N"


def _names(doc: dict[str, Any]) -> list[str]:
    return [str(doc[f]) for f in ("name", "common_name", "eo:common_name") if doc.get(f)]


def _resolve(item: dict[str, Any], name: str) -> Source | list[str] | None:
    """The source of band ``name`` in ``item``; a list of candidates if ambiguous; None if absent."""
    props, assets = item["properties"], item["assets"]
    if name in assets:
        a = assets[name]
        return Source(name, 1, _metadata_count(props, a), False)
    m = re.fullmatch(r"(.+)\.(\d+)", name)
    if m and m.group(1) in assets:
        a = assets[m.group(1)]
        return Source(m.group(1), int(m.group(2)), _metadata_count(props, a), True)
    for fields in (("name",), ("common_name", "eo:common_name")):
        hits = []
        for key, a in assets.items():
            if not _is_raster(a):
                continue
            docs = _asset_band_docs(props, a)
            for i, d in enumerate(docs):
                if any(str(d.get(f)) == name for f in fields if d.get(f)):
                    hits.append(Source(key, i + 1, _metadata_count(props, a) or len(docs), False))
        single = [h for h in hits if h.count == 1]
        if len(single) == 1 or (not single and len(hits) == 1):
            return (single or hits)[0]
        if hits:
            return sorted(f"{h.asset}" if h.count == 1 else f"{h.asset}.{h.index}" for h in hits)
    return None


def available_names(item: dict[str, Any]) -> list[str]:
    """The raster asset keys and band names an item answers to (for error messages)."""
    props, out = item["properties"], []
    for key, a in item["assets"].items():
        if not _is_raster(a):
            continue
        docs = _asset_band_docs(props, a)
        if len(docs) > 1:
            out += [f"{key}.{i + 1}" for i in range(len(docs))]
        else:
            out.append(key)
        for d in docs:
            out += _names(d)
    return sorted(set(out), key=str.lower)


# -- hrefs --------------------------------------------------------------------------------------------------
def _is_remote(href: str) -> bool:
    return len(urlparse(href).scheme) > 1 and urlparse(href).scheme != "file"


def _local_path(href: str) -> str:
    u = urlparse(href)
    return unquote(u.path) if u.scheme == "file" else href


def absolute_href(href: str, self_href: str | None) -> str:
    """An asset href made absolute: a local absolute path or a URL stays as is; a relative one is resolved
    against the item's own location (pystac would join even an absolute local path onto a remote self link).
    """
    if len(urlparse(href).scheme) > 1:  # a URL (a Windows drive letter is a 1-letter "scheme")
        return href
    if os.path.isabs(href):
        return os.path.normpath(href)
    if self_href is None:
        return os.path.abspath(href)
    if _is_remote(self_href):
        return urljoin(self_href, href)
    return os.path.normpath(os.path.join(os.path.dirname(_local_path(self_href)), href))


# -- projection ---------------------------------------------------------------------------------------------
def _crs_of(holder: dict[str, Any]) -> Any:
    """The pyproj CRS named by a holder's proj:* fields, None if none, or raise STACError if unreadable."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    for key in ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson"):
        v = holder.get(key)
        if v is None:
            continue
        try:
            return CRS.from_epsg(v) if key == "proj:epsg" else CRS.from_user_input(v)
        except (CRSError, TypeError, ValueError) as e:
            raise STACError(f"{key}={v!r} is not a CRS pyproj can read ({e}).") from None
    return None


def _proj(item: dict[str, Any], key: str) -> dict[str, Any]:
    """The proj:* fields that apply to one asset: the item's, overridden by the asset's own."""
    props, asset = item["properties"], item["assets"][key]
    out = {k: props[k] for k in _PROJ_KEYS if props.get(k) is not None}
    crs_keys = ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson")
    if any(asset.get(k) is not None for k in crs_keys):
        for k in crs_keys:
            out.pop(k, None)
    out.update({k: asset[k] for k in _PROJ_KEYS if asset.get(k) is not None})
    return out


# -- probing ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """What a raster file's own header says."""

    count: int
    dtype: str
    nodata: float | None
    crs: Any  # rasterio CRS or None
    transform: tuple[float, ...]
    shape: tuple[int, int]


def _remote_env() -> Any:
    """The GDAL options odc-stac will read remote files with (its ``configure_rio`` settings, if any), plus
    short timeouts so an unreachable host fails in seconds. A plain ``rasterio.Env``: no state left behind."""
    import rasterio

    opts: dict[str, Any] = {}
    try:
        from odc.loader._rio import capture_rio_env

        opts = dict(capture_rio_env())
    except ImportError:  # another odc-stac layout: rasterio's defaults
        pass
    aws = opts.pop("_aws", None)
    session = None
    if aws:
        from rasterio.session import AWSSession

        session = AWSSession(**aws)
    return rasterio.Env(session=session, **{**opts, **_PROBE_ENV})


def _open_header(href: str) -> Header:
    import contextlib

    import rasterio

    # local files keep GDAL's defaults: sidecars (.aux.xml, .ovr, world files) are part of the header
    env = _remote_env() if _is_remote(href) else contextlib.nullcontext()
    with env, rasterio.open(href) as src:
        return Header(
            src.count,
            str(src.dtypes[0]),
            src.nodata,
            src.crs,
            tuple(src.transform)[:6],
            (src.height, src.width),
        )


def _where(item: dict[str, Any], key: str, name: str) -> str:
    asset = f"asset {key!r}" + (f" (band {name!r})" if name != key else "")
    return f"item {item['id']!r}, {asset}, href {item['assets'][key]['href']!r}"


def _compare(item: dict[str, Any], key: str, name: str, src: Source, h: Header) -> None:
    """Refuse an item whose metadata disagrees with its file's header."""
    where = _where(item, key, name)
    fix = "Correct the item's metadata (e.g. regenerate it from the file with rio-stac), or drop the item."
    proj = _proj(item, key)
    shape = proj.get("proj:shape")
    if shape is not None and [int(v) for v in shape] != list(h.shape):
        raise STACError(
            f"{where}: proj:shape is {list(shape)} but the file has {list(h.shape)} (rows, cols). {fix}"
        )
    tr = proj.get("proj:transform")
    if tr is not None:
        tr6 = [float(v) for v in list(tr)[:6]]
        tol = 1e-3 * max(abs(h.transform[0]), abs(h.transform[4]), 1e-9)  # a thousandth of a pixel
        if len(tr6) < 6 or not np.allclose(tr6, h.transform, rtol=0, atol=tol):
            raise STACError(
                f"{where}: proj:transform is {tr6} but the file's geotransform is {list(h.transform)}. {fix}"
            )
    pb = proj.get("proj:bbox")
    if pb is not None and len(pb) == 4:
        (x0, y0), (x1, y1) = _corners(h)
        tol = 0.5 * max(abs(h.transform[0]), abs(h.transform[4]))
        if not np.allclose([float(v) for v in pb], [x0, y0, x1, y1], rtol=0, atol=tol):
            raise STACError(f"{where}: proj:bbox is {list(pb)} but the file covers {[x0, y0, x1, y1]}. {fix}")
    crs = _crs_of(proj)
    if crs is not None and h.crs is not None:
        from pyproj import CRS

        if not CRS.from_user_input(h.crs.to_wkt()).equals(crs, ignore_axis_order=True):
            said = proj.get("proj:code") or proj.get("proj:epsg") or "its proj:wkt2/projjson"
            raise STACError(f"{where}: the item says CRS {said} but the file is in {h.crs}. {fix}")
    if src.count is not None and src.count != h.count:
        raise STACError(
            f"{where}: the STAC metadata describes {src.count} band(s) but the file has {h.count}. {fix}"
        )
    if src.index > h.count:
        raise STACError(
            f"{where}: band {src.index} was asked for but the file has {h.count} band(s); "
            f"ask for {key!r}" + (f" or {key}.1 … {key}.{h.count}" if h.count > 1 else "") + "."
        )
    if h.count > 1 and not src.explicit and src.count is None:
        raise STACError(
            f"{where}: the file has {h.count} bands but the STAC metadata does not describe them (no "
            "raster:bands), so odc-stac would silently load band 1 only. Ask for the bands you want by "
            f"number: {[f'{key}.{i + 1}' for i in range(h.count)]}."
        )


def _corners(h: Header) -> tuple[tuple[float, float], tuple[float, float]]:
    from affine import Affine

    t = Affine(*h.transform)
    (ax, ay), (bx, by) = t * (0, 0), t * (h.shape[1], h.shape[0])
    return (min(ax, bx), min(ay, by)), (max(ax, bx), max(ay, by))


def _probe(item: dict[str, Any], key: str, name: str) -> Header:
    import rasterio.errors

    href = item["assets"][key]["href"]
    try:
        return _open_header(href)
    except (rasterio.errors.RasterioError, OSError) as e:
        remote = _is_remote(href)
        hint = (
            "Check the address and your network, and for cloud storage your credentials or signing (e.g. "
            "AWS_NO_SIGN_REQUEST=YES for public buckets, `planetary_computer.sign` for Planetary Computer). "
            if remote
            else ""
        )
        raise STACError(
            f"cannot open {_where(item, key, name)}: {e}. {hint}No pixels were read. "
            "Pass check='none' to skip this check and load anyway."
        ) from None


# -- the plan -----------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Normalised items (plain dicts) and what to load from them."""

    items: list[dict[str, Any]]  # each with assets "ga0", "ga1", ... (one per requested band)
    bands: list[str]  # the requested names, in cube order
    load_names: list[str]  # odc-stac band names for the assets ("ga0" or "ga0.2" for band 2 of an asset)
    multiband: list[str] = field(default_factory=list)  # requested names that come from a multi-band asset
    headers: dict[str, Header] = field(default_factory=dict)  # probed header per requested name
    dtype: np.dtype | None = None
    fill: Any = None


def asset_key(j: int) -> str:
    return f"ga{j}"


def _band_docs(props: dict[str, Any], asset: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``raster:bands`` (``count`` entries) for an asset copy, from ``raster:bands`` or STAC 1.1 ``bands``.

    Not from the probed header: the output dtype must not depend on ``check=``.
    """
    docs: list[dict[str, Any]] = []
    for key in ("raster:bands", "bands"):
        raw = asset.get(key)
        if isinstance(raw, list) and raw:
            for b in raw:
                b = b if isinstance(b, dict) else {}
                docs.append(
                    {
                        k: b[k]
                        for k in ("data_type", "nodata", "scale", "offset", "unit")
                        if b.get(k) is not None
                    }
                )
            break
    docs = docs or [{}]
    for k in ("data_type", "nodata"):  # STAC 1.1 lets these sit on the asset or the item
        v = asset.get(k, props.get(k))
        if v is not None:
            for d in docs:
                d.setdefault(k, v)
    if len(docs) < count:
        docs += [dict(docs[-1]) for _ in range(count - len(docs))]
    return docs[:count]


def plan_load(
    items: list[Any],
    bands: Sequence[str],
    *,
    check: str,
    dtype: Any,
) -> Plan:
    """Resolve every requested band in every item, check the assets, and build the normalised copies."""
    if check not in ("first", "all", "none"):
        raise STACError(f"check={check!r}; expected 'first', 'all' or 'none'.")
    docs = [_normalised_dict(it) for it in items]
    ids = [d["id"] for d in docs]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise STACError(
            f"item id(s) {dups} appear more than once in items; expected each item once. Remove the duplicates "
            "(e.g. from concatenated search results: `{i.id: i for i in items}.values()`)."
        )
    sources = _resolve_all(docs, bands)

    # probe: the first item with each requested band (check="first") or every one (check="all")
    headers: dict[str, Header] = {}
    if check != "none":
        _check_local_files(docs, bands, sources)
        seen: dict[str, Header] = {}
        for j, name in enumerate(bands):
            for n, (doc, src) in enumerate(zip(docs, sources[j], strict=True)):
                if n and check == "first":
                    break
                href = doc["assets"][src.asset]["href"]
                if href not in seen:
                    seen[href] = _probe(doc, src.asset, name)
                _compare(doc, src.asset, name, src, seen[href])
                headers.setdefault(name, seen[href])

    # one odc-stac band name per requested band: the same band index in every item
    counts, load_names = [], []
    for j, name in enumerate(bands):
        hdr = headers.get(name)
        idx = {src.index for src in sources[j]}
        if len(idx) > 1:
            where = [f"{d['id']!r}: {s.asset}.{s.index}" for d, s in zip(docs, sources[j], strict=True)][:4]
            raise STACError(
                f"band {name!r} is a different band number in different items ({', '.join(where)}); "
                "load those items separately."
            )
        count = max(max(s.count or 1 for s in sources[j]), hdr.count if hdr else 1, *idx)
        counts.append(count)
        load_names.append(f"{asset_key(j)}.{idx.pop()}" if count > 1 else asset_key(j))
    multiband = [name for name, c in zip(bands, counts, strict=True) if c > 1]

    # the copies
    out_items = []
    for n, doc in enumerate(docs):
        assets = {}
        for j in range(len(bands)):
            src = sources[j][n]
            a = doc["assets"][src.asset]
            new = {
                k: v for k, v in a.items() if k not in ("bands", "eo:bands", "raster:bands", "roles", "type")
            }
            new.update(_proj(doc, src.asset))
            crs = _crs_of(new)
            epsg = crs.to_epsg() if crs is not None else None
            if epsg is not None:  # both spellings: pystac >= 1.12 reads proj:code, stackstac only proj:epsg
                new["proj:epsg"], new["proj:code"] = epsg, f"EPSG:{epsg}"
            new["type"] = "image/tiff; application=geotiff"
            new["roles"] = ["data"]
            new["raster:bands"] = _band_docs(doc["properties"], a, counts[j])
            new["ga:index"] = src.index
            assets[asset_key(j)] = new
        props = {k: v for k, v in doc["properties"].items() if k not in ("eo:bands", "bands", *_PROJ_KEYS)}
        exts = [_RASTER_SCHEMA]
        if any(k in a for a in assets.values() for k in _PROJ_KEYS):
            exts.append(_PROJ_SCHEMA)
        # the copies are current STAC (pystac need not migrate them): 1.1 with proj v2 and raster v1.1
        out_items.append(
            {**doc, "stac_version": "1.1.0", "properties": props, "assets": assets, "stac_extensions": exts}
        )
    out_dtype, fill = _dtype_and_fill(out_items, len(bands), dtype)
    return Plan(out_items, list(bands), load_names, multiband, headers, out_dtype, fill)


def _normalised_dict(item: Any) -> dict[str, Any]:
    """A deep-copied dict of an item with absolute hrefs, no links, and a datetime."""
    d = copy.deepcopy(item.to_dict(transform_hrefs=False, include_self_link=False))
    self_href = item.get_self_href()
    for a in d.get("assets", {}).values():
        a["href"] = absolute_href(str(a.get("href", "")), self_href)
    d["links"] = []
    props = d.setdefault("properties", {})
    for key in ("datetime", "start_datetime", "end_datetime"):
        if props.get(key) is not None:
            props[key] = _utc(props[key], d.get("id"), key)
    if props.get("datetime") is None:
        start = props.get("start_datetime")
        if start is None:
            raise STACError(
                f"STAC item {d.get('id')!r} has neither datetime nor start_datetime; a cube needs a time per item."
            )
        props["datetime"] = start  # what odc-stac uses; stackstac would give NaT
    return d


def _utc(value: Any, item_id: Any, key: str) -> str:
    """An RFC 3339 time as UTC with a Z: odc-stac drops a UTC offset without converting (18:05+01:00 became
    18:05), stackstac converts; in UTC both agree."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise STACError(
            f"STAC item {item_id!r} has {key}={value!r}; expected an RFC 3339 time like '2020-01-14T17:05:46Z'."
        ) from None
    t = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _resolve_all(docs: list[dict[str, Any]], bands: Sequence[str]) -> list[list[Source]]:
    lacking = [(doc, [b for b in bands if _resolve(doc, b) is None]) for doc in docs]
    lacking = [(doc, miss) for doc, miss in lacking if miss]
    if lacking:
        doc, miss = lacking[0]
        raster = sorted(k for k, a in doc["assets"].items() if _is_raster(a))
        names = sorted(set(available_names(doc)) - set(raster), key=str.lower)
        more = f" ({len(lacking)} of {len(docs)} items lack some)" if len(docs) > 1 else ""
        raise STACError(
            f"STAC item {doc['id']!r} lacks the requested band(s) {miss}{more}; it has assets {raster}"
            + (f" and band names {names}" if names else "")
            + ". Request bands every item has, or filter the items first."
            + (
                " Give bands as a list: bands=['red', 'nir'], not 'red,nir'."
                if any("," in b for b in miss)
                else ""
            )
        )
    out: list[list[Source]] = []
    for name in bands:
        row: list[Source] = []
        for doc in docs:
            r = _resolve(doc, name)
            if isinstance(r, list):
                raise STACError(
                    f"band {name!r} is ambiguous in item {doc['id']!r}: it names {r}. Ask for one of those instead."
                )
            assert r is not None  # checked above
            a = doc["assets"][r.asset]
            if not _is_raster(a) and (a.get("type") or a.get("roles")):  # say so, unless nothing says
                raise STACError(
                    f"asset {r.asset!r} of item {doc['id']!r} is not raster data (type {a.get('type')!r}, roles "
                    f"{a.get('roles')}). Raster bands it has: {available_names(doc)}."
                )
            if r.count is not None and r.count > 1 and not r.explicit and r.asset == name:
                docs_ = _asset_band_docs(doc["properties"], a)
                named = [(_names(x) or ["?"])[0] for x in docs_]
                raise STACError(
                    f"asset {name!r} of item {doc['id']!r} has {r.count} bands; ask for them one by one: "
                    f"{[f'{name}.{i + 1}' for i in range(r.count)]}"
                    + (f" (named {named})" if docs_ else "")
                    + "."
                )
            if r.count is not None and r.index > r.count:
                raise STACError(
                    f"band {name!r}: asset {r.asset!r} of item {doc['id']!r} has {r.count} band(s); "
                    f"expected {r.asset}.1 … {r.asset}.{r.count}."
                )
            row.append(r)
        out.append(row)
    # one asset band asked for twice under different names
    for n, doc in enumerate(docs):
        seen: dict[tuple[str, int], str] = {}
        for j, name in enumerate(bands):
            k = (out[j][n].asset, out[j][n].index)
            if k in seen:
                raise STACError(
                    f"bands {seen[k]!r} and {name!r} are the same band ({k[0]!r} band {k[1]}) in item "
                    f"{doc['id']!r}; ask for it once."
                )
            seen[k] = name
    return out


def _check_local_files(docs: list[dict[str, Any]], bands: Sequence[str], sources: list[list[Source]]) -> None:
    """Every local href of every requested band must exist (a cheap stat, no open)."""
    for j, name in enumerate(bands):
        for doc, src in zip(docs, sources[j], strict=True):
            href = doc["assets"][src.asset]["href"]
            if not _is_remote(href) and not os.path.exists(_local_path(href)):
                raise STACError(
                    f"{_where(doc, src.asset, name)}: no such file. Local hrefs are read as given (absolute) "
                    "or relative to the item's JSON file; fix the href, or move the file there."
                )


def _dtype_and_fill(items: list[dict[str, Any]], nbands: int, dtype: Any) -> tuple[np.dtype, Any]:
    """One output dtype and fill value for both engines."""
    if dtype is not None:
        try:
            out = np.dtype(dtype)
        except TypeError as e:
            raise STACError(f"dtype={dtype!r} is not a numpy dtype ({e}); e.g. dtype='float32'.") from None
        if out.kind not in "uif":
            raise STACError(
                f"dtype={dtype!r}; expected an integer or float dtype, e.g. 'float32' or 'uint16'."
            )
    else:
        types, unknown = set(), False
        for it in items:
            for j in range(nbands):
                a = it["assets"][asset_key(j)]
                t = a["raster:bands"][a["ga:index"] - 1].get("data_type")
                if t is None:
                    unknown = True
                else:
                    types.add(str(t))
        try:
            out = (
                np.dtype("float32") if unknown or not types else np.result_type(*[np.dtype(t) for t in types])
            )
        except TypeError:
            out = np.dtype("float32")
        if out.kind not in "uif":
            out = np.dtype("float32")
    if out.kind == "f":
        return out, out.type("nan")
    nodatas = set()
    for it in items:
        for j in range(nbands):
            a = it["assets"][asset_key(j)]
            nodatas.add(a["raster:bands"][a["ga:index"] - 1].get("nodata"))
    nd = nodatas.pop() if len(nodatas) == 1 else None
    info = np.iinfo(out)
    if (
        isinstance(nd, (int, float))
        and not isinstance(nd, bool)
        and math.isfinite(nd)
        and info.min <= nd <= info.max
    ):
        return out, out.type(nd)
    return out, out.type(0)


def check_bbox(bbox: Any) -> tuple[float, float, float, float]:
    """A lon/lat bbox as 4 floats, or STACError."""
    try:
        box = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise STACError(f"bbox={bbox!r}; expected (min lon, min lat, max lon, max lat) numbers.") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise STACError(f"bbox={bbox!r}; expected 4 finite numbers (min lon, min lat, max lon, max lat).")
    x0, y0, x1, y1 = box
    if not (-180 <= x0 < x1 <= 180 and -90 <= y0 < y1 <= 90):
        raise STACError(
            f"bbox={bbox!r} is not (min lon, min lat, max lon, max lat) in degrees with min < max; bbox is "
            "longitude/latitude (EPSG:4326), not projected coordinates."
        )
    return x0, y0, x1, y1


def item_crs(items: list[dict[str, Any]], nbands: int) -> list[Any]:
    """The distinct CRSs of the requested assets (from proj:*), in first-seen order."""
    seen: list[Any] = []
    for it in items:
        for j in range(nbands):
            crs = _crs_of(it["assets"][asset_key(j)])
            if crs is not None and not any(crs.equals(s, ignore_axis_order=True) for s in seen):
                seen.append(crs)
    return seen
