"""Chip labels from vector regions: polygons rasterised onto the cube grid, a majority label per window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from geoarray.chips.plan import ChipPlan, Window
from geoarray.errors import TrainError

__all__ = ["region_labels"]


def region_labels(
    plan: ChipPlan,
    cube: xr.Dataset,
    regions: str | Any,
    *,
    property: str,
    classes: Sequence[str] | None = None,
) -> list[str]:
    """Give every window a chip label from a vector file (seed 002's country labels).

    Polygons from ``regions`` (a GeoJSON path or a GeoDataFrame-like with ``__geo_interface__``) are
    rasterised onto the cube grid by the value of ``property``; a chip's label is the majority region under
    it. Chips outside every region are dropped. Returns the class names (sorted property values, unless
    ``classes`` is given).
    """
    import json
    from pathlib import Path

    from pyproj import Transformer
    from rasterio.features import rasterize
    from shapely.geometry import mapping, shape
    from shapely.ops import transform as shp_transform

    if isinstance(regions, (str, Path)):
        doc = json.loads(Path(regions).read_text())
        src_crs = doc.get("crs", {}).get("properties", {}).get("name", "EPSG:4326")
    else:
        doc = regions.__geo_interface__
        src_crs = getattr(regions, "crs", None) or "EPSG:4326"
    feats = [f for f in doc["features"] if property in (f.get("properties") or {})]
    if not feats:
        raise TrainError(f"no feature of the region file has the property {property!r}.")
    values = sorted({str(f["properties"][property]) for f in feats})
    names = list(classes) if classes is not None else values
    missing = [v for v in values if v not in names]
    if missing:
        raise TrainError(f"region values {missing} are not in classes={names}.")
    to_cube = Transformer.from_crs(src_crs, cube.rio.crs, always_xy=True).transform
    shapes = [
        (
            mapping(shp_transform(to_cube, shape(f["geometry"]))),
            names.index(str(f["properties"][property])) + 1,
        )
        for f in feats
    ]
    raster = rasterize(
        shapes,
        out_shape=(cube.sizes["y"], cube.sizes["x"]),
        transform=cube.rio.transform(recalc=True),
        fill=0,
        dtype="int32",
    )

    def label(w: Window) -> int | None:
        vals = raster[w.y : w.y + w.size, w.x : w.x + w.size].ravel()
        vals = vals[vals > 0]
        return int(np.bincount(vals).argmax()) - 1 if vals.size else None

    for split in ("train", "val"):
        labelled = [Window(w.t, w.y, w.x, w.size, w.block, label(w)) for w in getattr(plan, split)]
        setattr(plan, split, [w for w in labelled if w.label is not None])
    if not plan.train:
        raise TrainError(
            "no training chip lies inside a region of the vector file; check its CRS and extent."
        )
    return names
