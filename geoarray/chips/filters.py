"""Chip filters: which planned windows a training run keeps (valid fraction, labelled pixels, positives).

They read only ``valid`` and the labels (and the imagery, for ``min_valid``), one read block at a time.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["apply_filters", "label_nodata"]


def label_nodata(lab: xr.DataArray) -> int:
    """The id that means "no label": ``attrs["nodata"]``, else a ``_FillValue`` attr (where rioxarray's
    ``open_rasterio`` keeps a raster's nodata), else -1 (no id is nodata)."""
    for key in ("nodata", "_FillValue"):
        v = lab.attrs.get(key)
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f == int(f):
            return int(f)
    return -1


def _label_masks(
    lv: np.ndarray, dims: tuple[str, ...], nodata: int, positive_classes: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, positive)`` pixel masks with a leading time axis (length 1 for static labels)."""
    if "class" in dims:  # multi-label 0/1 masks: labelled where any class has a value
        ax = dims.index("class")
        lab = (lv != nodata).any(axis=ax)
        if positive_classes is None:
            pos = lab
        else:
            pos = (np.take(lv, list(positive_classes), axis=ax) == 1).any(axis=ax)
        rest = tuple(d for d in dims if d != "class")
    else:
        lab = lv != nodata
        pos = lab if positive_classes is None else lab & np.isin(lv, list(positive_classes))
        rest = dims
    if "time" not in rest:
        lab, pos = lab[None], pos[None]
    return lab, pos


def _judge(
    valid: np.ndarray | None,
    img: np.ndarray | None,
    lv: np.ndarray | None,
    shape: tuple[int, int, int],
    origin: tuple[int, int],
    items: list[tuple[str, int, Any]],
    min_valid: float,
    min_positive: int,
    positive_classes: Sequence[int] | None,
    lab_dims: tuple[str, ...],
    nodata: int,
) -> tuple[list[tuple[str, int, str | None]], int]:
    """One read block's verdicts: ``(split, index, reason dropped or None)`` per window, and its labelled pixels."""
    ok = np.asarray(valid, dtype=bool) if valid is not None else np.ones(shape, dtype=bool)
    if img is not None:
        ok = ok & np.isfinite(np.asarray(img, dtype=np.float32)).all(axis=1)
    labelled = pos = None
    total = 0
    if lv is not None:
        labelled, pos = _label_masks(np.asarray(lv), lab_dims, nodata, positive_classes)
        total = int(labelled.any(0).sum())
    y0, x0 = origin
    out: list[tuple[str, int, str | None]] = []
    for split, i, w in items:
        ys, xs = slice(w.y - y0, w.y - y0 + w.size), slice(w.x - x0, w.x - x0 + w.size)
        t = list(w.t)
        okw = ok[t][:, ys, xs]
        reason = None
        if min_valid > 0 and okw.mean() < min_valid:
            reason = "min_valid"
        elif labelled is not None and pos is not None:
            lt = labelled[t] if labelled.shape[0] > 1 else labelled
            if not (lt[:, ys, xs] & okw).any():
                reason = "unlabelled"
            elif min_positive > 0:
                pt = pos[t] if pos.shape[0] > 1 else pos
                if int((pt[:, ys, xs] & okw).any(0).sum()) < min_positive:
                    reason = "min_positive"
        out.append((split, i, reason))
    return out, total


class _Chunks:
    """The chunk keys of a dask array ``(..., y, x)``, to cut any y/x rectangle from in a hand-made task.

    A dask slice (or a ``Delayed`` argument) per read block costs its own graph, culling and optimisation: on a
    cube of hundreds of blocks that was most of the time. Each block's task names the chunks it covers instead.
    """

    def __init__(self, a: Any) -> None:
        self.array = a
        self.keys = np.empty(a.numblocks, dtype=object)
        for idx in np.ndindex(*a.numblocks):
            self.keys[idx] = (a.name, *idx)
        self.ey = np.cumsum((0, *a.chunks[-2]))
        self.ex = np.cumsum((0, *a.chunks[-1]))

    def cut(self, b: Any) -> tuple[Any, int, int, int, int]:
        iy0, ix0 = int(np.searchsorted(self.ey, b.y0, "right")) - 1, int(np.searchsorted(self.ex, b.x0, "right")) - 1
        iy1, ix1 = int(np.searchsorted(self.ey, b.y1, "left")), int(np.searchsorted(self.ex, b.x1, "left"))
        nested = self.keys[..., iy0:iy1, ix0:ix1].tolist()  # the task gets these chunks' arrays in their place
        return nested, b.y0 - int(self.ey[iy0]), b.x0 - int(self.ex[ix0]), b.y1 - b.y0, b.x1 - b.x0


def _judge_cuts(rest: tuple[Any, ...], *cuts: Any) -> tuple[list[tuple[str, int, str | None]], int]:
    """:func:`_judge` on arrays given as numpy or as ``_Chunks.cut`` (computed chunks, concatenated and cut)."""
    arrays = []
    for a in cuts:
        if isinstance(a, tuple):
            nested, oy, ox, h, w = a
            a = np.block(nested)[..., oy : oy + h, ox : ox + w]
        arrays.append(a)
    return _judge(*arrays, *rest)


def apply_filters(
    cube: xr.Dataset,
    plan: Any,
    min_valid: float,
    min_positive: int,
    positive_classes: Sequence[int] | None,
    labels: str | None,
    var: str,
) -> None:
    """Drop ``plan``'s windows below the valid fraction, without a labelled pixel, or below the positive count.

    ``plan`` is a :class:`~geoarray.chips.plan.ChipPlan`, changed in place (``train``, ``val``, ``dropped``,
    ``labelled_pixels``).

    Reads ``valid`` and ``labels`` block by block (and the imagery, to check it is finite, when
    ``min_valid > 0``), in one ``dask.compute`` for all blocks: each read block is one task that reduces its
    pixels to its windows' verdicts, so only verdicts are kept (not blocks) and blocks are read in parallel.
    A labelled pixel has a label other than nodata on a date where it is valid.
    """
    import dask
    import dask.array
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    has_valid = "valid" in cube.data_vars
    lab = (
        cube[labels].transpose(*[d for d in ("time", "class", "y", "x") if d in cube[labels].dims])
        if labels
        else None
    )
    nodata = label_nodata(lab) if lab is not None else -1
    lab_dims = tuple(map(str, lab.dims)) if lab is not None else ()
    by_block: dict[int, list[tuple[str, int, Any]]] = defaultdict(list)
    for split in ("train", "val"):
        for i, w in enumerate(getattr(plan, split)):
            by_block[w.block].append((split, i, w))
    sources = (
        cube["valid"].transpose("time", "y", "x") if has_valid else None,
        cube[var].transpose("time", "band", "y", "x") if min_valid > 0 else None,
        lab,
    )
    arrays = [s.data if s is not None else None for s in sources]
    chunks = [_Chunks(a) if isinstance(a, dask.array.Array) else None for a in arrays]
    lazy = any(c is not None for c in chunks)
    tasks: list[tuple[Any, ...]] = []
    judged: list[tuple[list[tuple[str, int, str | None]], int]] = []
    for bi, items in by_block.items():
        b = plan.extent(bi, [w for _, _, w in items])  # random windows reach past their block
        parts = [
            None if a is None else c.cut(b) if c is not None else np.asarray(a[..., b.y0 : b.y1, b.x0 : b.x1])
            for a, c in zip(arrays, chunks, strict=True)
        ]
        shape = (cube.sizes["time"], b.y1 - b.y0, b.x1 - b.x0)
        rest = (shape, (b.y0, b.x0), items, min_valid, min_positive, positive_classes, lab_dims, nodata)
        # the block's own options sit in a partial, so the scheduler never reads the windows as task arguments
        if lazy:
            tasks.append((partial(_judge_cuts, rest), *parts))
        else:
            judged.append(_judge_cuts(rest, *parts))
    if lazy:  # one graph, one compute: a task per block on top of the arrays' own graphs
        name = f"apply-filters-{uuid.uuid4().hex}"
        layer: dict[Any, Any] = {(name, n): task for n, task in enumerate(tasks)}
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[c.array for c in chunks if c is not None])
        judged = list(dask.compute(*[Delayed(k, graph, layer=name) for k in layer]))
    keep: dict[str, set[int]] = {"train": set(), "val": set()}
    total = 0
    for verdicts, n in judged:
        total += n
        for split, i, reason in verdicts:
            if reason is None:
                keep[split].add(i)
            else:
                plan.dropped[reason] += 1
    plan.train = [w for i, w in enumerate(plan.train) if i in keep["train"]]
    plan.val = [w for i, w in enumerate(plan.val) if i in keep["val"]]
    if lab is not None:
        plan.labelled_pixels = total
