"""Chip labels from vector regions: polygons rasterised onto the cube grid, a majority label per window.

Vector files are read with pyogrio (GDAL) in their layer's own CRS, so GeoPackage, Shapefile, GeoJSON,
FlatGeobuf and every other vector format of pyogrio's GDAL work; objects with ``__geo_interface__`` (a
GeoDataFrame) are read through it. Regions are rasterised one read block at a time, so memory stays bounded
by the block size on scene-sized cubes.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geoarray.chips.plan import ChipPlan, Window
from geoarray.errors import GeoArrayWarning, TrainError

__all__ = ["rasterize_regions", "read_regions", "region_labels"]

_PARQUET = (".parquet", ".geoparquet")


def read_regions(
    regions: str | os.PathLike[str] | Any, *, property: str, layer: str | None = None
) -> tuple[list[Any], list[Any], Any]:
    """Geometries (shapely), the values of ``property`` and the CRS of a vector file or a GeoDataFrame-like.

    Features without a geometry (or with an empty one) or without a value are left out.

    Raises
    ------
    TrainError
        A path that does not exist or is not a vector file GDAL reads, a layer that is not there (or no layer
        named in a multi-layer file), a property the features do not have (the message lists those they
        have), or no feature left.
    """
    if isinstance(regions, (str, os.PathLike)):
        geoms, values, crs = _read_file(Path(regions), property, layer)
    else:
        geoms, values, crs = _read_object(regions, property)
    keep = [
        i
        for i, (g, v) in enumerate(zip(geoms, values, strict=True))
        if g is not None and not g.is_empty and not _null(v)
    ]
    if not keep:
        raise TrainError(
            f"no feature of regions={_name(regions)} has both a geometry and a {property!r} value; expected "
            "regions with their class in that property."
        )
    return [geoms[i] for i in keep], [values[i] for i in keep], crs


def _null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _name(regions: Any) -> str:
    return repr(str(regions)) if isinstance(regions, (str, os.PathLike)) else type(regions).__name__


def _read_file(path: Path, property: str, layer: str | None) -> tuple[list[Any], list[Any], Any]:
    import pyogrio
    import shapely
    from pyogrio.errors import DataSourceError

    if not path.exists():
        raise TrainError(
            f"regions={str(path)!r} does not exist; expected a vector file (GeoPackage, Shapefile, GeoJSON, ...)."
        )
    if path.suffix.lower() in _PARQUET and "Parquet" not in pyogrio.list_drivers():
        raise TrainError(
            f"regions={str(path)!r} is GeoParquet, which this pyogrio's GDAL ({pyogrio.__gdal_version_string__}) "
            "cannot read (no Parquet driver); pass the GeoDataFrame instead (geopandas.read_parquet(path)), or "
            "convert the file to a GeoPackage (ogr2ogr out.gpkg in.parquet)."
        )
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except DataSourceError as e:
        why = str(e).split(";")[0].replace(f"'{path}' ", "")  # GDAL's first sentence, without the path again
        raise TrainError(
            f"regions={str(path)!r} is not a vector file GDAL can read ({why}); expected a GeoPackage, "
            "Shapefile, GeoJSON or another OGR format."
        ) from None
    if not layers:
        raise TrainError(f"regions={str(path)!r} holds no vector layer; expected one with the regions.")
    if layer is None and len(layers) > 1:
        raise TrainError(
            f"regions={str(path)!r} holds {len(layers)} layers {layers}; name the one with the regions "
            "(region_layer=..., --region-layer)."
        )
    if layer is not None and layer not in layers:
        raise TrainError(f"regions={str(path)!r} has no layer {layer!r}; it has {layers}.")
    info = pyogrio.read_info(path, layer=layer)
    fields = [str(f) for f in info["fields"]]
    if property not in fields:
        raise TrainError(
            f"the regions in {str(path)!r} have no property {property!r}; they have {fields}. Pass one of "
            "those as region_property."
        )
    _, _, wkb, field_data = pyogrio.raw.read(path, layer=layer, columns=[property])
    geoms = list(shapely.from_wkb(wkb)) if wkb is not None else []
    return geoms, list(field_data[0]), info.get("crs")


def _read_object(obj: Any, property: str) -> tuple[list[Any], list[Any], Any]:
    from shapely.geometry import shape

    doc = getattr(obj, "__geo_interface__", None)
    if doc is None and isinstance(obj, dict):
        doc = obj
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise TrainError(
            f"regions is a {type(obj).__name__}; expected a path to a vector file, a GeoDataFrame (or any object "
            "with a FeatureCollection __geo_interface__ and a .crs), or a GeoJSON FeatureCollection dict."
        )
    crs = getattr(obj, "crs", None)
    if crs is None:  # a GeoJSON mapping: its legacy "crs" member, else RFC 7946's lon/lat
        crs = (doc.get("crs") or {}).get("properties", {}).get("name", "EPSG:4326")
    feats = doc.get("features") or []
    names = sorted({str(k) for f in feats for k in (f.get("properties") or {})})
    if property not in names:
        raise TrainError(
            f"the regions have no property {property!r}; they have {names}. Pass one of those as "
            "region_property."
        )
    geoms = [shape(f["geometry"]) if f.get("geometry") else None for f in feats]
    return geoms, [(f.get("properties") or {}).get(property) for f in feats], crs


def _class_names(values: list[Any]) -> tuple[list[str], list[str]]:
    """Each value's class name, and the sorted names: numbers in numeric order (2 before 10, and 1.0 is
    "1"), anything else as text. Numbers mixed with text are refused: ``1`` and ``"1"`` would merge into one
    class (or, as ``1.0`` and ``"1"``, split into two), and the class order would be neither numeric nor
    alphabetical."""
    numeric = [isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values]
    if any(numeric) and not all(numeric):
        nums = sorted({repr(v) for v, n in zip(values, numeric, strict=True) if n})
        texts = sorted({repr(v) for v, n in zip(values, numeric, strict=True) if not n})
        raise TrainError(
            f"the region values mix numbers ({', '.join(nums[:5])}) and text ({', '.join(texts[:5])}); expected "
            "one type, so that a class is one value (1 and '1' would be the same class name). Make the "
            "property all text or all numbers, e.g. gdf[prop] = gdf[prop].astype(str), or fix the features "
            "whose value has the other type."
        )
    if all(numeric):
        named = [str(int(v)) if float(v).is_integer() else str(float(v)) for v in values]
        order = {n: float(v) for n, v in zip(named, values, strict=True)}
        return named, sorted(order, key=order.__getitem__)
    named = [str(v) for v in values]
    return named, sorted(set(named))


def _to_cube_crs(geoms: list[Any], src: Any, cube: xr.Dataset) -> list[Any]:
    import shapely
    from pyproj import CRS, Transformer

    dst = cube.rio.crs
    if src is None:
        warnings.warn(
            f"the regions have no CRS; expected one (a .prj beside a Shapefile, or the layer's SRS). They are "
            f"taken to be in the cube's CRS ({dst}); if they are not, set their CRS "
            "(ogr2ogr -a_srs EPSG:XXXX out.gpkg in.shp).",
            GeoArrayWarning,
            stacklevel=4,
        )
        return geoms
    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return geoms
    tr = Transformer.from_crs(src, dst, always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return list(shapely.transform(np.asarray(geoms, dtype=object), fn))


def region_labels(
    plan: ChipPlan,
    cube: xr.Dataset,
    regions: str | os.PathLike[str] | Any,
    *,
    property: str,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
) -> list[str]:
    """Give every window a chip label from vector regions (seed 002's country labels).

    Regions from ``regions`` (a vector file read with pyogrio, in its layer's CRS, or a GeoDataFrame-like
    with ``__geo_interface__`` and ``.crs``) are rasterised onto the cube grid by the value of ``property``;
    a chip's label is the majority region under it. Chips outside every region are dropped. Returns the class
    names: the property's distinct values sorted (numbers numerically), unless ``classes`` is given.

    Raises
    ------
    TrainError
        Unreadable regions (see :func:`read_regions`), values missing from ``classes``, regions that do not
        overlap the cube (the message gives both extents), or no training chip inside a region.
    """
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    geoms, values, src_crs = read_regions(regions, property=property, layer=layer)
    values_named, found = _class_names(values)
    names = list(classes) if classes is not None else found
    missing = [v for v in found if v not in names]
    if missing:
        raise TrainError(f"region values {missing} are not in classes={names}.")
    geoms = _to_cube_crs(geoms, src_crs, cube)
    codes = np.array([names.index(v) + 1 for v in values_named], dtype=np.int32)
    transform = cube.rio.transform(recalc=True)
    left, bottom, right, top = cube.rio.bounds(recalc=True)
    gx0, gy0, gx1, gy1 = shapely.total_bounds(np.asarray(geoms, dtype=object))
    if gx1 < left or gx0 > right or gy1 < bottom or gy0 > top:
        raise TrainError(
            f"the regions do not overlap the cube: in the cube's CRS ({cube.rio.crs}) they span "
            f"x {gx0:.6g}..{gx1:.6g}, y {gy0:.6g}..{gy1:.6g}, the cube x {left:.6g}..{right:.6g}, "
            f"y {bottom:.6g}..{top:.6g} (the regions' CRS: {src_crs}). Check the regions' CRS and extent."
        )
    tree = shapely.STRtree(geoms)
    by_block: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for split in ("train", "val"):
        for i, w in enumerate(getattr(plan, split)):
            by_block[w.block].append((split, i))
    labels: dict[str, dict[int, int | None]] = {"train": {}, "val": {}}
    for bi, items in by_block.items():
        # random windows reach past their block
        b = plan.extent(bi, [getattr(plan, split)[i] for split, i in items])
        bt = transform * Affine.translation(b.x0, b.y0)
        (xa, ya), (xb, yb) = bt * (0, 0), bt * (b.x1 - b.x0, b.y1 - b.y0)
        hits = tree.query(shapely.box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)))
        if len(hits) == 0:
            for split, i in items:
                labels[split][i] = None
            continue
        raster = rasterize(
            [(geoms[k], int(codes[k])) for k in sorted(hits)],
            out_shape=(b.y1 - b.y0, b.x1 - b.x0),
            transform=bt,
            fill=0,
            dtype="int32",
        )
        for split, i in items:
            w = getattr(plan, split)[i]
            vals = raster[w.y - b.y0 : w.y - b.y0 + w.size, w.x - b.x0 : w.x - b.x0 + w.size].ravel()
            vals = vals[vals > 0]
            labels[split][i] = int(np.bincount(vals).argmax()) - 1 if vals.size else None
    for split in ("train", "val"):
        ws = getattr(plan, split)
        labelled = [Window(w.t, w.y, w.x, w.size, w.block, labels[split].get(i)) for i, w in enumerate(ws)]
        setattr(plan, split, [w for w in labelled if w.label is not None])
    _warn_unused(names, [w.label for split in ("train", "val") for w in getattr(plan, split)], "chip")
    if not plan.train:
        raise TrainError(
            f"no training chip lies inside a region ({len(geoms)} regions, {len(plan.val)} validation chips "
            "in one); expected regions covering some training chips. Use a smaller chip_size or stride, a "
            "lower val_fraction, or regions over more of the cube."
        )
    return names


def rasterize_regions(
    cube: xr.Dataset,
    regions: str | os.PathLike[str] | Any,
    *,
    property: str,
    classes: Sequence[str] | None = None,
    layer: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Regions burnt onto the cube's whole ``(y, x)`` grid: class ids (int32, -1 outside every region) and the
    class names (as :func:`region_labels` orders them). Holds one int32 per pixel: for probes, not scenes.

    Raises
    ------
    TrainError
        As :func:`region_labels`: unreadable regions, values missing from ``classes``, no overlap.
    """
    from rasterio.features import rasterize

    geoms, values, src_crs = read_regions(regions, property=property, layer=layer)
    values_named, found = _class_names(values)
    names = list(classes) if classes is not None else found
    missing = [v for v in found if v not in names]
    if missing:
        raise TrainError(f"region values {missing} are not in classes={names}.")
    geoms = _to_cube_crs(geoms, src_crs, cube)
    codes = [names.index(v) for v in values_named]
    out = rasterize(
        list(zip(geoms, codes, strict=True)),
        out_shape=(cube.sizes["y"], cube.sizes["x"]),
        transform=cube.rio.transform(recalc=True),
        fill=-1,
        dtype="int32",
    )
    if (out < 0).all():
        left, bottom, right, top = cube.rio.bounds(recalc=True)
        raise TrainError(
            f"the regions do not overlap the cube (x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g} in "
            f"{cube.rio.crs}; the regions' CRS: {src_crs}). Check the regions' CRS and extent."
        )
    _warn_unused(names, np.unique(out[out >= 0]).tolist(), "pixel")
    return out, names


def _warn_unused(names: Sequence[str], used: Any, what: str) -> None:
    """Warn about region classes that label no ``what`` (chip or pixel) of the cube: a class the model or
    probe then carries without a single sample, or classes painted over by another region."""
    seen = {int(k) for k in used if k is not None}
    unused = [n for k, n in enumerate(names) if k not in seen]
    if unused:
        warnings.warn(
            f"region classes {unused} label no {what} of the cube (of {len(names)} classes {list(names)}): their "
            f"polygons lie outside the cube{', are never the majority region of a chip' if what == 'chip' else ''}"
            ", or lie under later overlapping regions (rasterised in file order, the last one wins). Expected "
            "every class to label some of the cube; check the regions' extent and overlaps, or drop those classes.",
            GeoArrayWarning,
            stacklevel=3,
        )
