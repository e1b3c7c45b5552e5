"""Chip filters: which planned windows a training run keeps (valid fraction, labelled pixels, positives).

They read only ``valid`` and the labels (and the imagery, for ``min_valid``), one read block at a time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
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
    ``min_valid > 0``). A labelled pixel has a label other than nodata on a date where it is valid.
    """
    has_valid = "valid" in cube.data_vars
    lab = (
        cube[labels].transpose(*[d for d in ("time", "class", "y", "x") if d in cube[labels].dims])
        if labels
        else None
    )
    nodata = label_nodata(lab) if lab is not None else -1
    by_block: dict[int, list[tuple[str, int, Any]]] = defaultdict(list)
    for split in ("train", "val"):
        for i, w in enumerate(getattr(plan, split)):
            by_block[w.block].append((split, i, w))
    keep: dict[str, set[int]] = {"train": set(), "val": set()}
    total = 0
    for bi, items in by_block.items():
        b = plan.extent(bi, [w for _, _, w in items])  # random windows reach past their block
        sl: dict[str, Any] = {"y": slice(b.y0, b.y1), "x": slice(b.x0, b.x1)}
        if has_valid:
            ok = np.asarray(cube["valid"].transpose("time", "y", "x").isel(sl).values, dtype=bool)
        else:
            ok = np.ones((cube.sizes["time"], b.y1 - b.y0, b.x1 - b.x0), dtype=bool)
        if min_valid > 0:
            img = cube[var].transpose("time", "band", "y", "x").isel(sl)
            ok = ok & np.isfinite(np.asarray(img.values, dtype=np.float32)).all(axis=1)
        labelled = pos = None
        if lab is not None:
            labelled, pos = _label_masks(
                np.asarray(lab.isel(sl).values), tuple(map(str, lab.dims)), nodata, positive_classes
            )
            total += int(labelled.any(0).sum())
        for split, i, w in items:
            ys, xs = slice(w.y - b.y0, w.y - b.y0 + w.size), slice(w.x - b.x0, w.x - b.x0 + w.size)
            t = list(w.t)
            okw = ok[t][:, ys, xs]
            if min_valid > 0 and okw.mean() < min_valid:
                plan.dropped["min_valid"] += 1
                continue
            if labelled is not None and pos is not None:
                lt = labelled[t] if labelled.shape[0] > 1 else labelled
                if not (lt[:, ys, xs] & okw).any():
                    plan.dropped["unlabelled"] += 1
                    continue
                if min_positive > 0:
                    pt = pos[t] if pos.shape[0] > 1 else pos
                    if int((pt[:, ys, xs] & okw).any(0).sum()) < min_positive:
                        plan.dropped["min_positive"] += 1
                        continue
            keep[split].add(i)
    plan.train = [w for i, w in enumerate(plan.train) if i in keep["train"]]
    plan.val = [w for i, w in enumerate(plan.val) if i in keep["val"]]
    if lab is not None:
        plan.labelled_pixels = total
