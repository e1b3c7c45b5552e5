"""Test helpers that are not fixtures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask


class CountingScheduler:
    """A dask scheduler that counts computes and fails past ``max_computes`` (xarray's raise_if_dask_computes)."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"too many dask computes: {self.total} > {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    sched = CountingScheduler(max_computes)
    with dask.config.set(scheduler=sched):
        yield sched


def write_west_east_regions(cube, path, split: int) -> str:
    """Two regions, west and east of x index ``split`` (property ``k``), covering ``cube``, as a real
    GeoJSON file in lon/lat at ``path``."""
    import json

    from pyproj import Transformer

    tr = Transformer.from_crs(cube.rio.crs, "EPSG:4326", always_xy=True)
    x0, x1, xm = float(cube.x[0]) - 5, float(cube.x[-1]) + 5, float(cube.x[split])
    y0, y1 = float(cube.y[-1]) - 5, float(cube.y[0]) + 5

    def poly(a, b):
        ring = [tr.transform(x, y) for x, y in ((a, y0), (b, y0), (b, y1), (a, y1), (a, y0))]
        return {"type": "Polygon", "coordinates": [ring]}

    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"k": "west"}, "geometry": poly(x0, xm)},
            {"type": "Feature", "properties": {"k": "east"}, "geometry": poly(xm, x1)},
        ],
    }
    path.write_text(json.dumps(doc))
    return str(path)
