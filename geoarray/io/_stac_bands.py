"""STAC input, step 2: which asset (and band of it) each requested name means in each item."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geoarray.errors import STACError

__all__ = ["Source", "asset_band_docs", "available_names", "is_raster", "resolve_all"]


_RASTER_EXT = {"tif", "tiff", "jp2", "vrt", "img", "nc", "h5", "hdf", "zarr"}


def is_raster(asset: dict[str, Any]) -> bool:
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


def asset_band_docs(props: dict[str, Any], asset: dict[str, Any]) -> list[dict[str, Any]]:
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
            if not is_raster(a):
                continue
            docs = asset_band_docs(props, a)
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
        if not is_raster(a):
            continue
        docs = asset_band_docs(props, a)
        if len(docs) > 1:
            out += [f"{key}.{i + 1}" for i in range(len(docs))]
        else:
            out.append(key)
        for d in docs:
            out += _names(d)
    return sorted(set(out), key=str.lower)


def resolve_all(docs: list[dict[str, Any]], bands: Sequence[str]) -> list[list[Source]]:
    lacking = [(doc, [b for b in bands if _resolve(doc, b) is None]) for doc in docs]
    lacking = [(doc, miss) for doc, miss in lacking if miss]
    if lacking:
        doc, miss = lacking[0]
        raster = sorted(k for k, a in doc["assets"].items() if is_raster(a))
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
            if not is_raster(a) and (a.get("type") or a.get("roles")):  # say so, unless nothing says
                raise STACError(
                    f"asset {r.asset!r} of item {doc['id']!r} is not raster data (type {a.get('type')!r}, roles "
                    f"{a.get('roles')}). Raster bands it has: {available_names(doc)}."
                )
            if r.count is not None and r.count > 1 and not r.explicit and r.asset == name:
                docs_ = asset_band_docs(doc["properties"], a)
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
