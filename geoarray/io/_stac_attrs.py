"""STAC input, step 5: what the cube records of the plan beside its pixels (scale/offset, as
:func:`geoarray.from_geotiff` records GeoTIFF scale tags), and the grid choices refused before loading."""

from __future__ import annotations

from typing import Any

from geoarray.errors import STACError
from geoarray.io._stac_plan import Plan, asset_key, item_crs

__all__ = ["crs_name", "refuse_unit_change", "scale_attrs"]


def crs_name(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def scale_attrs(plan: Plan) -> dict[str, list[float]]:
    """Per-band ``raster:bands`` scale/offset, as :func:`geoarray.from_geotiff` keeps GeoTIFF scale tags: not
    applied, recorded when not identity; refused when items state different ones (their pixels are in different
    units). Items that state none are taken to share the others'."""
    per_band: list[tuple[float, float]] = []
    for j, name in enumerate(plan.bands):
        seen: dict[tuple[float, float], str] = {}
        for it in plan.items:
            a = it["assets"][asset_key(j)]
            doc = a["raster:bands"][a["ga:index"] - 1]
            if "scale" not in doc and "offset" not in doc:
                continue  # not stated (e.g. an item without raster:bands): no evidence of other units
            so = (float(doc.get("scale", 1.0)), float(doc.get("offset", 0.0)))
            seen.setdefault(so, str(it["id"]))
        if len(seen) > 1:
            shown = ", ".join(f"{i!r}: scale {s:g}, offset {o:g}" for (s, o), i in list(seen.items())[:4])
            raise STACError(
                f"band {name!r} has different raster:bands scale/offset across items ({shown}), so its pixel "
                "values are in different units (e.g. Sentinel-2 L2A before and after processing baseline "
                "04.00 added an offset); expected one scaling per band. Load the groups separately, convert "
                "each to physical values (`ds.imagery * scale + offset`, in float) and concatenate them."
            )
        per_band.append(next(iter(seen), (1.0, 0.0)))
    if all(s == 1.0 and o == 0.0 for s, o in per_band):
        return {}
    return {"scales": [s for s, _ in per_band], "offsets": [o for _, o in per_band]}


def refuse_unit_change(plan: Plan, out_crs: Any, nbands: int) -> None:
    """Without ``resolution=``, odc-geo keeps the items' pixel size as a number: 30 (m) becomes 30 degrees in
    EPSG:4326, a cube of one pixel. Refuse a change between degrees and metres, with a size to pass."""
    native = item_crs(plan.items, nbands)
    if not native or all(c.is_geographic == out_crs.is_geographic for c in native):
        return
    px = None
    for it in plan.items:
        a = it["assets"][asset_key(0)]
        tr = a.get("proj:transform") or it["properties"].get("proj:transform")
        if tr:
            px = abs(float(tr[0]))
            break
    if px is None:
        h = next(iter(plan.headers.values()), None)
        px = abs(h.transform[0]) if h is not None else None
    src_unit, dst_unit = ("degrees", "metres") if native[0].is_geographic else ("metres", "degrees")
    hint = ""
    if px is not None:
        same = px * 111_320 if native[0].is_geographic else px / 111_320  # about, at the equator
        hint = f" The items' pixels are {px:g} {src_unit}, about resolution={same:.3g} in {dst_unit}."
    raise STACError(
        f"crs={crs_name(out_crs)!r} is in {dst_unit} but the items are in {src_unit} ({crs_name(native[0])}), "
        f"and no resolution= was given: their pixel size would be kept as a number of {dst_unit}. Pass "
        f"resolution= in {dst_unit}.{hint}"
    )
