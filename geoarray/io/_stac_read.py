"""STAC input, step 1: whatever the user passed (Items, an ItemCollection, dicts, a file or a local catalog)
to a list of ``pystac.Item``, and asset hrefs made absolute. Nothing is fetched from the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from geoarray.errors import STACError

__all__ = ["ItemsLike", "absolute_href", "gdal_s3", "is_remote", "local_path", "read_items"]

ItemsLike = Any  # pystac.Item | Iterable[pystac.Item] | pystac.ItemCollection | dict | str | os.PathLike


_PAS = (
    "Pass pystac Items, a pystac.ItemCollection (e.g. `pystac_client` search `.item_collection()`), or the "
    "path of an ItemCollection / search result saved to disk (a FeatureCollection JSON)."
)


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
    remote = [_link_href(link) for link in links if is_remote(_link_href(link))]
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
    if root is not None and is_remote(_link_href(root)):
        cat = cat.clone()
        cat.set_root(cat)  # pystac would fetch a remote root while walking a local catalog
    try:
        items = list(cat.get_items(recursive=True))
    except Exception as e:  # a broken link in a local catalog
        raise STACError(f"{where} could not be read: {type(e).__name__}: {e}") from None
    if not items:
        raise STACError(f"{where} links to no items (its children hold none). {_PAS}")
    return items


def is_remote(href: str) -> bool:
    return len(urlparse(href).scheme) > 1 and urlparse(href).scheme != "file"


def local_path(href: str) -> str:
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
    if is_remote(self_href):
        return urljoin(self_href, href)
    return os.path.normpath(os.path.join(os.path.dirname(local_path(self_href)), href))


def gdal_s3(storage_options: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """fsspec/s3fs ``storage_options`` as what GDAL's /vsis3/ needs: rasterio ``AWSSession`` arguments (the
    credentials, region and endpoint) and GDAL config options (``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``).

    ``None`` gives ``(None, {})``: GDAL then finds credentials as usual (AWS_* environment variables, profile).
    An ``endpoint_url`` (MinIO, Ceph, a local test server) turns virtual hosting off, and ``http://`` turns
    HTTPS off, as s3fs does.
    """
    if not storage_options:
        return None, {}
    if not isinstance(storage_options, dict):
        raise STACError(f"storage_options={storage_options!r}; expected a dict of s3fs options (key, secret, ...).")
    so = dict(storage_options)
    client = dict(so.get("client_kwargs") or {})
    aws: dict[str, Any] = {}
    for ours, theirs in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key"), ("token", "aws_session_token")):
        if so.get(ours):
            aws[theirs] = so[ours]
    region = client.get("region_name") or so.get("region_name")
    if region:
        aws["region_name"] = region
    if so.get("anon"):
        aws = {"aws_unsigned": True, **({"region_name": region} if region else {})}
    opts: dict[str, str] = {}
    endpoint = client.get("endpoint_url") or so.get("endpoint_url")
    if endpoint:
        u = urlparse(str(endpoint))
        aws["endpoint_url"] = u.netloc or u.path  # GDAL's AWS_S3_ENDPOINT is host[:port], no scheme
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
        opts["AWS_HTTPS"] = "NO" if u.scheme == "http" else "YES"
    return aws, opts

