"""The dask graph of predict: one task per output block, reading the input chunks its window touches.

Block edges sit on multiples of the model's stride and the halo is a multiple of the stride, so the pooling
grid inside every window lines up with the grid of the whole image.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from geoarray import _inference
from geoarray._inference import BlockSpec, RunSpec

__all__ = ["MIN_BLOCK", "TINY", "aligned", "build_graph", "direct_sources", "grouped"]

def aligned(chunks: tuple[int, ...], stride: int, size: int) -> tuple[int, ...]:
    """Chunks whose inner edges fall on multiples of ``stride`` (the last chunk takes the remainder)."""
    if all(c % stride == 0 for c in chunks[:-1]):
        return chunks
    c = int(math.ceil(chunks[0] / stride) * stride)
    return dsa.core.normalize_chunks(c, (size,))[0]


MIN_BLOCK = 256
TINY = 32


def grouped(chunks: tuple[int, ...], size: int, below: int) -> tuple[int, ...]:
    """Chunks under ``below`` px grouped into whole multiples of the chunk size of at least MIN_BLOCK px."""
    c = chunks[0]
    if c >= below or len(chunks) == 1:
        return chunks
    return dsa.core.normalize_chunks(math.ceil(MIN_BLOCK / c) * c, (size,))[0]


def direct_sources(
    cube: xr.Dataset, var: str, needed: list[str], present: list[str]
) -> dict[str, Any] | None:
    """Store locations when imagery (and valid) are untouched store variables: tasks then read their own windows."""
    from geoarray._source import source_of

    img = source_of(cube[var])
    if img is None:
        return None
    valid = None
    if "valid" in cube.data_vars:
        valid = source_of(cube["valid"])
        if valid is None:
            return None
    idx = [present.index(b) for b in needed]
    bands: Any = slice(None) if idx == list(range(len(present))) else idx
    return {"img": img, "valid": valid, "bands": bands}


def build_graph(
    x: dsa.Array,
    valid: dsa.Array | None,
    blocks: tuple[tuple[int, ...], tuple[int, ...]],
    spec: RunSpec,
    h: int,
    run_times: np.ndarray,
    dates: np.ndarray,
    *,
    direct: dict[str, Any] | None = None,
) -> tuple[list[dsa.Array], list[tuple[Any, list[Any]]]]:
    """One task per output block (``blocks``: the y and x block sizes); outputs are getitem views of it.

    A block's task receives the grid of source chunks of ``x`` (and ``valid``) that intersect its window
    (block + halo). Returns the output arrays and, per block, its task key and the key of each output's chunk.
    """
    tch = x.chunks[0]
    ych, xch = blocks
    ybounds, xbounds = np.cumsum((0, *ych)), np.cumsum((0, *xch))
    ysrc, xsrc = np.cumsum((0, *x.chunks[2])), np.cumsum((0, *x.chunks[3]))
    ny, nx = int(ybounds[-1]), int(xbounds[-1])
    input_kind = spec.input_kind
    name = "geoarray-predict-" + tokenize(x.name, valid.name if valid is not None else None, spec, h, direct)
    dsk: dict[Any, Any] = {}
    tbounds = np.cumsum((0, *tch))
    # Everything a block needs is a product of its row's, column's and date chunk's parts: computed once per
    # row / column / date chunk here, not once per block (150k blocks: the graph builds in seconds).
    rows = [_axis_part(ybounds, ysrc, yi, h, ny) for yi in range(len(ych))]
    cols = [_axis_part(xbounds, xsrc, xi, h, nx) for xi in range(len(xch))]
    for ti in range(len(tch)):
        t0, t1 = int(tbounds[ti]), int(tbounds[ti + 1])
        rt = tuple(bool(v) for v in run_times[t0:t1])
        dt = tuple(float(v) for v in dates[t0:t1])
        tdirect = None if direct is None else dict(direct, t=(t0, t1))
        for yi, (ys, (cy0, cy1), (iy, by), (wy0, wy1)) in enumerate(rows):
            for xi, (xs, (cx0, cx1), (ix, bx), (wx0, wx1)) in enumerate(cols):
                block_spec = BlockSpec(
                    spec,
                    crop=(cy0, cy1, cx0, cx1),
                    inner=(iy, ix, by, bx),
                    run_times=rt,
                    dates=dt,
                    direct=None if tdirect is None else {**tdirect, "win": (wy0, wy1, wx0, wx1)},
                )
                if direct is not None:
                    dsk[(name, ti, yi, xi)] = (_inference.run_block, None, None, block_spec)
                    continue
                keys = [[(x.name, ti, 0, yj, xj) for xj in xs] for yj in ys]
                vkeys = None if valid is None else [[(valid.name, ti, yj, xj) for xj in xs] for yj in ys]
                dsk[(name, ti, yi, xi)] = (_inference.run_block, keys, vkeys, block_spec)
    deps = [] if direct is not None else [x] if valid is None else [x, valid]
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)  # type: ignore[arg-type]

    arrays = []
    out_keys: dict[Any, list[Any]] = {key: [] for key in dsk}
    k = spec.channels
    for j, out in enumerate(spec.outputs):
        dtype = np.dtype(spec.mask_dtype if out == "mask" else spec.float_dtype)
        has_k = out != "mask" or spec.kind == "multilabel"
        oname = f"{name}-{out}"
        layer: dict[Any, Any] = {}
        for key in dsk:
            _, ti, yi, xi = key
            lead = () if input_kind == "pixels" else (ti,)
            okey = (oname, *lead, *((0,) if has_k else ()), yi, xi)
            layer[okey] = (operator.getitem, key, j)
            out_keys[key].append(okey)
        g = HighLevelGraph(
            {**graph.layers, oname: MaterializedLayer(layer)}, {**graph.dependencies, oname: {name}}
        )
        lead_chunks: tuple[tuple[int, ...], ...] = () if input_kind == "pixels" else (tch,)
        chunks = (*lead_chunks, *(((k,),) if has_k else ()), ych, xch)
        arrays.append(
            dsa.Array(g, oname, chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype=dtype))
        )
    return arrays, list(out_keys.items())


def _axis_part(
    bounds: np.ndarray, src: np.ndarray, i: int, h: int, n: int
) -> tuple[list[int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Block ``i`` along one axis: the source chunks its window touches, the window inside their mosaic,
    the block's offset and size inside the window, and the window in array coordinates."""
    b0, b1 = int(bounds[i]), int(bounds[i + 1])
    w0, w1 = max(0, b0 - h), min(n, b1 + h)
    cover = _covering(src, w0, w1)
    base = int(src[cover[0]])
    return cover, (w0 - base, w1 - base), (b0 - w0, b1 - b0), (w0, w1)


def _covering(bounds: np.ndarray, lo: int, hi: int) -> list[int]:
    """Indices of the chunks (edges ``bounds``) that intersect ``[lo, hi)``."""
    first = int(np.searchsorted(bounds, lo, side="right")) - 1
    last = int(np.searchsorted(bounds, hi, side="left")) - 1
    return list(range(first, last + 1))
