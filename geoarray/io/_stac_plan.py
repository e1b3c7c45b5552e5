"""STAC input, step 4: the plan both engines load from.

One normalised copy of each item (a plain dict) whose assets are exactly the requested bands, under private
keys, with absolute hrefs, UTC times and the projection fields both engines read, plus one output dtype and
fill value. Everything here runs before any pixel is read.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoarray.errors import STACError
from geoarray.io._stac_bands import resolve_all
from geoarray.io._stac_check import PROJ_KEYS, Header, check_local_files, compare, crs_of, probe, proj_fields
from geoarray.io._stac_read import absolute_href

__all__ = ["Plan", "asset_key", "check_bbox", "item_crs", "plan_load"]

log = logging.getLogger(__name__)


_PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"

_RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


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
    sources = resolve_all(docs, bands)

    # probe: the first item with each requested band (check="first") or every one (check="all")
    headers: dict[str, Header] = {}
    if check != "none":
        check_local_files(docs, bands, sources)
        seen: dict[str, Header] = {}
        for j, name in enumerate(bands):
            for n, (doc, src) in enumerate(zip(docs, sources[j], strict=True)):
                if n and check == "first":
                    break
                href = doc["assets"][src.asset]["href"]
                if href not in seen:
                    seen[href] = probe(doc, src.asset, name)
                compare(doc, src.asset, name, src, seen[href])
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
            new.update(proj_fields(doc, src.asset))
            crs = crs_of(new)
            epsg = crs.to_epsg() if crs is not None else None
            if epsg is not None:  # both spellings: pystac >= 1.12 reads proj:code, stackstac only proj:epsg
                new["proj:epsg"], new["proj:code"] = epsg, f"EPSG:{epsg}"
            new["type"] = "image/tiff; application=geotiff"
            new["roles"] = ["data"]
            new["raster:bands"] = _band_docs(doc["properties"], a, counts[j])
            new["ga:index"] = src.index
            assets[asset_key(j)] = new
        props = {k: v for k, v in doc["properties"].items() if k not in ("eo:bands", "bands", *PROJ_KEYS)}
        exts = [_RASTER_SCHEMA]
        if any(k in a for a in assets.values() for k in PROJ_KEYS):
            exts.append(_PROJ_SCHEMA)
        # the copies are current STAC (pystac need not migrate them): 1.1 with proj v2 and raster v1.1
        out_items.append(
            {**doc, "stac_version": "1.1.0", "properties": props, "assets": assets, "stac_extensions": exts}
        )
    out_dtype, fill = _dtype_and_fill(out_items, len(bands), dtype, headers)
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


def _dtype_and_fill(
    items: list[dict[str, Any]], nbands: int, dtype: Any, headers: dict[str, Header] | None = None
) -> tuple[np.dtype, Any]:
    """One output dtype and fill value for both engines.

    An integer cube's fill is the items' ``nodata``; without one, the nodata tag the probed files share
    (``check=`` "first"/"all"), else 0. Not 0 first: a signed band (a DEM, int16 reflectance) holds real
    zeros, which would be marked invalid.
    """
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
    if nd is None and nodatas == set() and headers:
        tags = {h.nodata for h in headers.values()}
        nd = tags.pop() if len(tags) == 1 else None
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
            crs = crs_of(it["assets"][asset_key(j)])
            if crs is not None and not any(crs.equals(s, ignore_axis_order=True) for s in seen):
                seen.append(crs)
    return seen
