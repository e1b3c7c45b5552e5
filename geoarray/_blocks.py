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
from geoarray._output_parts import channels_of

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
    for ti in range(len(tch)):
        t0, t1 = int(tbounds[ti]), int(tbounds[ti + 1])
        for yi in range(len(ych)):
            y0, y1 = int(ybounds[yi]), int(ybounds[yi + 1])
            wy0, wy1 = max(0, y0 - h), min(ny, y1 + h)
            ys = _covering(ysrc, wy0, wy1)
            for xi in range(len(xch)):
                x0, x1 = int(xbounds[xi]), int(xbounds[xi + 1])
                wx0, wx1 = max(0, x0 - h), min(nx, x1 + h)
                xs = _covering(xsrc, wx0, wx1)
                base_y, base_x = int(ysrc[ys[0]]), int(xsrc[xs[0]])
                block_spec = BlockSpec(
                    spec,
                    crop=(wy0 - base_y, wy1 - base_y, wx0 - base_x, wx1 - base_x),
                    inner=(y0 - wy0, x0 - wx0, y1 - y0, x1 - x0),
                    run_times=tuple(bool(v) for v in run_times[t0:t1]),
                    dates=tuple(float(v) for v in dates[t0:t1]),
                    direct=None if direct is None else dict(direct, t=(t0, t1), win=(wy0, wy1, wx0, wx1)),
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
    for j, out in enumerate(spec.outputs):
        dtype = np.dtype(spec.mask_dtype if out == "mask" else spec.float_dtype)
        k = channels_of(spec, out)
        has_k = k > 0
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


def _covering(bounds: np.ndarray, lo: int, hi: int) -> list[int]:
    """Indices of the chunks (edges ``bounds``) that intersect ``[lo, hi)``."""
    first = int(np.searchsorted(bounds, lo, side="right")) - 1
    last = int(np.searchsorted(bounds, hi, side="left")) - 1
    return list(range(first, last + 1))
