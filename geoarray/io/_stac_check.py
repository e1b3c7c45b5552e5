"""STAC input, step 3: the files behind the requested bands exist, open, and agree with their items.

Only headers are read (remote ones inside short GDAL timeouts); no pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoarray.errors import STACError
from geoarray.io._stac_bands import Source
from geoarray.io._stac_read import is_remote, local_path

__all__ = ["PROJ_KEYS", "Header", "check_local_files", "compare", "crs_of", "probe", "proj_fields"]


PROJ_KEYS = (
    "proj:epsg",
    "proj:code",
    "proj:wkt2",
    "proj:projjson",
    "proj:shape",
    "proj:transform",
    "proj:bbox",
)

_PROBE_ENV = {
    "GDAL_HTTP_CONNECTTIMEOUT": "5",
    "GDAL_HTTP_TIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


def crs_of(holder: dict[str, Any]) -> Any:
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


def proj_fields(item: dict[str, Any], key: str) -> dict[str, Any]:
    """The proj:* fields that apply to one asset: the item's, overridden by the asset's own."""
    props, asset = item["properties"], item["assets"][key]
    out = {k: props[k] for k in PROJ_KEYS if props.get(k) is not None}
    crs_keys = ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson")
    if any(asset.get(k) is not None for k in crs_keys):
        for k in crs_keys:
            out.pop(k, None)
    out.update({k: asset[k] for k in PROJ_KEYS if asset.get(k) is not None})
    return out


@dataclass(frozen=True)
class Header:
    """What a raster file's own header says."""

    count: int
    dtype: str
    nodata: float | None
    crs: Any  # rasterio CRS or None
    transform: tuple[float, ...]
    shape: tuple[int, int]
    masked: bool = False  # a GDAL per-dataset mask (internal/.msk mask) or an alpha band marks fill


#: (AWSSession kwargs, GDAL options) from from_stac's storage_options, for the header probe of this call
S3_ENV: ContextVar[tuple[dict[str, Any] | None, dict[str, str]]] = ContextVar("geoarray_s3_env", default=(None, {}))


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
    s3_aws, s3_opts = S3_ENV.get()
    if s3_aws is not None:
        aws, opts = s3_aws, {**opts, **s3_opts}
    session = None
    if aws:
        from rasterio.session import AWSSession

        session = AWSSession(**aws)
    return rasterio.Env(session=session, **{**opts, **_PROBE_ENV})


def _open_header(href: str) -> Header:
    import contextlib

    import rasterio
    from rasterio.enums import ColorInterp, MaskFlags

    # local files keep GDAL's defaults: sidecars (.aux.xml, .ovr, world files) are part of the header
    env = _remote_env() if is_remote(href) else contextlib.nullcontext()
    with env, rasterio.open(href) as src:
        return Header(
            src.count,
            str(src.dtypes[0]),
            src.nodata,
            src.crs,
            tuple(src.transform)[:6],
            (src.height, src.width),
            any(MaskFlags.per_dataset in f for f in src.mask_flag_enums) or ColorInterp.alpha in src.colorinterp,
        )


def _where(item: dict[str, Any], key: str, name: str) -> str:
    asset = f"asset {key!r}" + (f" (band {name!r})" if name != key else "")
    return f"item {item['id']!r}, {asset}, href {item['assets'][key]['href']!r}"


def compare(item: dict[str, Any], key: str, name: str, src: Source, h: Header) -> None:
    """Refuse an item whose metadata disagrees with its file's header."""
    where = _where(item, key, name)
    fix = "Correct the item's metadata (e.g. regenerate it from the file with rio-stac), or drop the item."
    proj = proj_fields(item, key)
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
    crs = crs_of(proj)
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


def probe(item: dict[str, Any], key: str, name: str) -> Header:
    import rasterio.errors

    href = item["assets"][key]["href"]
    try:
        return _open_header(href)
    except (rasterio.errors.RasterioError, OSError) as e:
        remote = is_remote(href)
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


def check_local_files(docs: list[dict[str, Any]], bands: Sequence[str], sources: list[list[Source]]) -> None:
    """Every local href of every requested band must exist (a cheap stat, no open)."""
    for j, name in enumerate(bands):
        for doc, src in zip(docs, sources[j], strict=True):
            href = doc["assets"][src.asset]["href"]
            if not is_remote(href) and not os.path.exists(local_path(href)):
                raise STACError(
                    f"{_where(doc, src.asset, name)}: no such file. Local hrefs are read as given (absolute) "
                    "or relative to the item's JSON file; fix the href, or move the file there."
                )
