"""The chip filters judge every window like a per-window computation by hand, in one dask compute for all blocks."""

from __future__ import annotations

import copy

import dask
import dask.threaded
import numpy as np
import pytest

import geoarray.chips.plan as plan_module
from geoarray.chips import plan_chips
from geoarray.chips.filters import apply_filters
from geoarray.datasets import synthetic_cube


def _cube():
    c = synthetic_cube(size=(150, 130), n_times=3, seed=3)
    lab = c["labels"].values.copy()
    lab[:, 10:60, 20:90] = 255  # a nodata patch (the cube's labels' nodata) over several chunks
    lab[1, 90:140, :] = 255
    c["labels"] = c["labels"].copy(data=lab)
    img = c["imagery"].values.copy()
    img[2, 1, 70:110, 40:100] = np.nan  # non-finite imagery: invalid for min_valid
    c["imagery"] = c["imagery"].copy(data=img)
    return c


def _by_hand(c, windows, min_valid, min_positive, positive_classes):
    """Each window's fate, from the whole arrays: None (kept) or the filter that drops it."""
    ok = c["valid"].values & np.isfinite(c["imagery"].values).all(axis=1)
    lab = c["labels"].values
    fates = []
    for w in windows:
        t, ys, xs = list(w.t), slice(w.y, w.y + w.size), slice(w.x, w.x + w.size)
        okw, lw = ok[t][:, ys, xs], lab[t][:, ys, xs]
        if okw.mean() < min_valid:
            fates.append("min_valid")
        elif not ((lw != 255) & okw).any():
            fates.append("unlabelled")
        elif int((np.isin(lw, positive_classes) & okw).any(0).sum()) < min_positive:
            fates.append("min_positive")
        else:
            fates.append(None)
    return fates


@pytest.mark.parametrize("mode", ["grid", "random"])
def test_filters_equal_a_per_window_computation_on_numpy_and_dask_cubes(monkeypatch, mode):
    c = _cube()
    lazy = c.chunk({"time": 1, "y": 40, "x": 35})  # random windows cross these chunks' edges
    monkeypatch.setattr(plan_module, "apply_filters", lambda *a, **k: None)  # the plan as it is before filtering
    kw = {"chip_size": 16, "mode": mode, "val_fraction": 0.2, "seed": 0, "labels": "labels"}
    if mode == "random":
        kw["n_random"] = 6
    base = plan_chips(lazy, **kw)
    assert len(base.blocks) >= 12 and len(base.train) + len(base.val) > 50
    opts = (0.9, 30, [1, 2])
    fates = _by_hand(c, base.train + base.val, *opts)
    counts = {k: fates.count(k) for k in ("min_valid", "unlabelled", "min_positive")}
    assert all(counts.values()) and fates.count(None) > 10  # every filter drops some windows, some are kept
    kept = [w for w, f in zip(base.train + base.val, fates, strict=True) if f is None]

    calls = []

    def counting_get(dsk, keys, **kwargs):
        calls.append(len(keys) if isinstance(keys, list) else 1)
        return dask.threaded.get(dsk, keys, **kwargs)

    for cube in (lazy, c):  # dask-backed and numpy-backed
        plan = copy.deepcopy(base)
        calls.clear()
        with dask.config.set(scheduler=counting_get):
            apply_filters(cube, plan, *opts, "labels", "imagery")
        assert plan.train + plan.val == kept
        assert {k: plan.dropped[k] for k in counts} == counts
        ext = [plan.extent(bi, [w for w in base.train + base.val if w.block == bi]) for bi in {w.block for w in base.train + base.val}]
        lab = c["labels"].values != 255
        assert plan.labelled_pixels == sum(int(lab[:, e.y0 : e.y1, e.x0 : e.x1].any(0).sum()) for e in ext)
        assert len(calls) == (1 if cube is lazy else 0)  # one compute for all blocks (none on numpy)
