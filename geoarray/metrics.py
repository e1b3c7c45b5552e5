"""Scores: confusion matrix, per-class IoU / Dice / precision / recall / F1, top-k, change F1, effective rank.

Every function takes numpy arrays, or xarray/dask arrays (reduced chunk by chunk, never loaded whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geoarray._constants import COMPLETE, LABEL_NODATA
from geoarray.errors import CubeError, GeoArrayError, MetricsError

__all__ = ["change_f1", "confusion_matrix", "effective_rank", "evaluate", "scores", "topk_accuracy"]


def _class_ids(a: Any, role: str) -> np.ndarray:
    """``a`` flattened to int64 class ids; floats must hold whole numbers (NaN, as nodata, is skipped)."""
    a = np.asarray(a).ravel()
    if a.dtype.kind == "f":
        whole = np.isnan(a) | (a == np.floor(a))
        if not whole.all():
            bad = a[~whole][:3].tolist()
            raise MetricsError(
                f"the {role} holds values such as {bad} that are not class ids; expected integer class ids (e.g. "
                "predict's `mask`, or `probabilities.argmax('class')`, not the probabilities themselves)."
            )
        a = np.where(np.isnan(a), -1, a)
    return a.astype(np.int64)


def _bincount_block(p: np.ndarray, t: np.ndarray, n: int, ignore: int | None) -> np.ndarray:
    p = _class_ids(p, "prediction")
    t = _class_ids(t, "truth")
    ok = (t >= 0) & (t < n) & (p >= 0) & (p < n)
    if ignore is not None:
        ok &= t != ignore
    return np.bincount(t[ok] * n + p[ok], minlength=n * n).reshape(n, n)


def confusion_matrix(
    pred: Any, truth: Any, num_classes: int, *, ignore_index: int | None = None
) -> np.ndarray:
    """``cm[t, p]`` counts of truth class ``t`` predicted as ``p``; ``ignore_index`` and out-of-range ids skip.

    ``pred`` and ``truth`` may be numpy, xarray or dask arrays of the same shape (dask ones are reduced per
    chunk).
    """
    if hasattr(pred, "dims") and hasattr(truth, "dims"):  # xarray: align by dimension name, e.g. a
        import xarray as xr  # mask(time, y, x) against labels(y, x) scores every date

        try:
            pred, truth = xr.align(pred, truth, join="exact")  # broadcast alone would outer-join to NaN
        except ValueError as e:
            raise CubeError(
                f"prediction and truth coordinates differ ({e}); expected the same grid. Score a prediction "
                "against labels of the same cube, or align them first (e.g. `truth.reindex_like(pred, "
                "method='nearest')`)."
            ) from None
        pred, truth = xr.broadcast(pred, truth)
        truth = truth.transpose(*pred.dims)
    pv = getattr(pred, "data", pred)
    tv = getattr(truth, "data", truth)
    if tuple(pv.shape) != tuple(tv.shape):
        raise CubeError(
            f"prediction shape {tuple(pv.shape)} differs from truth shape {tuple(tv.shape)}; expected the same "
            "shape. Pass xarray DataArrays (aligned by dimension name) or select the same date/window in both."
        )
    if hasattr(pv, "dask") or hasattr(tv, "dask"):
        import dask
        import dask.array as dsa

        pv, tv = dsa.asarray(pv), dsa.asarray(tv)
        tv = tv.rechunk(pv.chunks)
        parts = [
            dask.delayed(_bincount_block)(a, b, num_classes, ignore_index)
            for a, b in zip(pv.to_delayed().ravel(), tv.to_delayed().ravel(), strict=True)
        ]
        return np.sum(dask.compute(*parts), axis=0)
    return _bincount_block(np.asarray(pv), np.asarray(tv), num_classes, ignore_index)


def scores(cm: np.ndarray, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class IoU, Dice, precision, recall and F1 from a confusion matrix, plus their means over classes
    present in the truth or the prediction, and overall accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise MetricsError(
            f"a confusion matrix of shape {cm.shape}; expected a square (classes, classes) one."
        )
    if classes is not None and len(classes) != len(cm):
        raise MetricsError(
            f"{len(classes)} class names {list(classes)} for a confusion matrix of {len(cm)} classes; expected "
            f"one name per row (id 0..{len(cm) - 1}), in id order."
        )
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
    present = (cm.sum(0) + cm.sum(1)) > 0
    names = list(classes) if classes is not None else [str(i) for i in range(len(tp))]

    def per(v: np.ndarray) -> dict[str, float | None]:
        return {n: (None if not present[i] or np.isnan(v[i]) else float(v[i])) for i, n in enumerate(names)}

    def mean(v: np.ndarray) -> float:
        vals = np.nan_to_num(v[present], nan=0.0)
        return float(vals.mean()) if vals.size else float("nan")

    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_iou": mean(iou),
        "mean_dice": mean(dice),
        "mean_f1": mean(f1),
        "iou": per(iou),
        "dice": per(dice),
        "precision": per(precision),
        "recall": per(recall),
        "f1": per(f1),
        "support": {n: int(cm.sum(1)[i]) for i, n in enumerate(names)},
    }


def evaluate(pred: Any, truth: Any, *, valid: Any = None, allow_partial: bool = False) -> dict[str, Any]:
    """Score a predicted class map against a truth class map: :func:`scores` over the truth's classes.

    Parameters
    ----------
    pred, truth
        xarray DataArrays of integer class ids with dims ``(y, x)`` or ``(time, y, x)`` (e.g. predict's
        ``mask`` and the cube's ``labels``), aligned by dimension name. Their ``nodata`` attrs (default 255)
        are skipped. When both have a ``classes`` attr, prediction ids are matched to truth ids **by name**
        (a model trained with the classes in another order scores correctly); a predicted class the truth
        does not name is an error, since no truth pixel could ever be it (a naming mismatch, most likely).
        With names on one side only, the ids must lie within that list. A static prediction ``(y, x)`` (a
        whole-series model's) against ``(time, y, x)`` truth is scored against the last date's labels, the ones
        such a model is trained on.
    valid
        Optional bool ``(time, y, x)``: truth pixels where it is False are skipped (when neither map has a
        ``time`` dim, the pixels with no valid date).
    allow_partial
        Score a prediction whose predict run has not finished (``geoarray_complete`` False): its missing
        chunks are nodata and skipped, so the scores describe only the part that was written.

    Returns
    -------
    dict
        As :func:`scores`, keyed by the truth's class names.

    Raises
    ------
    CubeError
        Something that is not a class map (floats, bool, a band or class dim), a partial prediction, class
        lists that don't match, or ids outside the named classes. Nothing is scored then.

    Examples
    --------
    >>> ds = geoarray.open_cube("site.zarr")  # doctest: +SKIP
    >>> geoarray.metrics.evaluate(ds["mask"], ds["labels"], valid=ds["valid"])["mean_iou"]  # doctest: +SKIP
    """
    for da, role in ((pred, "prediction"), (truth, "truth")):
        _check_class_map(da, role)
        require_complete(da, f"{role} {da.name!r}", allow_partial=allow_partial)
    p_names, t_names = _class_names(pred), _class_names(truth)
    p_nd, t_nd = _nodata(pred), _nodata(truth)
    if p_names is not None and t_names is not None:
        unknown = [c for c in p_names if c not in t_names]
        if unknown:
            raise CubeError(
                f"prediction {pred.name!r} has classes {p_names}, and {unknown} are not among the truth "
                f"{truth.name!r}'s classes {t_names}; expected the model's classes to be named as the truth's. "
                "Score against the labels the model was trained with, or give the classes matching names "
                "(the `classes` attr)."
            )
        classes, lut = t_names, [t_names.index(c) for c in p_names]
    else:
        classes = t_names or p_names or _ids_present(pred, truth, p_nd, t_nd)
        lut = list(range(len(classes)))
    n = len(classes)
    if "time" in truth.dims and "time" not in pred.dims:
        # a static map (a whole-series model's) against labels(time, y, x): the last date's labels, which are
        # what such a model trains on (chips/stream.py), not every date's in turn
        truth = truth.isel(time=-1)
    t = _relabelled(truth, list(range(n)), t_nd, n)
    if valid is not None:
        ok = valid.astype(bool)
        if "time" in ok.dims and "time" not in t.dims and "time" not in pred.dims:
            # a static map (e.g. a time-series model's) against static truth: a pixel counts when any date of
            # it is valid, as predict marks such outputs; broadcasting valid would count each pixel per date
            ok = ok.any("time")
        t = t.where(ok, -1)
    p = _relabelled(pred, lut, p_nd, n)
    cm = confusion_matrix(p, t, n + 1, ignore_index=-1)  # row/column n: ids outside the named classes
    for da, count, named in ((truth, cm[n].sum(), n), (pred, cm[:, n].sum(), len(lut))):
        if count:
            raise CubeError(
                f"{int(count)} pixels of {da.name!r} hold class ids outside 0..{named - 1}, the {named} classes "
                f"{(_class_names(da) or classes)[:named]} it is scored with (its nodata is {_nodata(da)}). Name "
                "every class in its `classes` attr, or set its `nodata` attr to the value of unknown pixels."
            )
    return scores(cm[:n, :n], classes)


def _check_class_map(da: Any, role: str) -> None:
    dims = tuple(map(str, getattr(da, "dims", ())))
    if not hasattr(da, "dims"):
        raise CubeError(f"the {role} is a {type(da).__name__}; expected an xarray DataArray of class ids.")
    fix = "Pass a class map such as predict's `mask` or the cube's `labels`."
    if da.dtype == bool or not np.issubdtype(da.dtype, np.integer):
        raise CubeError(
            f"the {role} {da.name!r} has dtype {da.dtype}; expected integer class ids (a class map). {fix}"
        )
    if dims not in (("y", "x"), ("time", "y", "x")):
        extra = [d for d in dims if d not in ("time", "y", "x")]
        kind = (
            " (a multi-label mask: score each class as its own 0/1 map)"
            if extra and "class" in extra[0]
            else ""
        )
        raise CubeError(
            f"the {role} {da.name!r} has dims {dims}{kind}; expected (y, x) or (time, y, x). {fix}"
        )


def require_complete(
    da: Any,
    what: str,
    *,
    allow_partial: bool = False,
    error: type[GeoArrayError] = CubeError,
    use: str = "score",
    flag: str = "allow_partial=True",
) -> None:
    """Refuse a partial predict output (``geoarray_complete`` False) unless ``allow_partial``; refuse even then
    an old partial output whose missing chunks read as a class id (written before outputs had a nodata fill)."""
    if da.attrs.get(COMPLETE) is not False:
        return
    if not allow_partial:
        raise error(
            f"{what} is a partial output: its predict run did not finish (attr {COMPLETE} is False), so the "
            f"chunks it did not write are nodata. Run the same predict again to finish it, or pass {flag} to "
            f"{use} what is there."
        )
    if _holes_read_as_a_class(da):
        raise error(
            f"{what} is a partial output of an older geoarray: its missing chunks read as class "
            f"{da.encoding.get('fill_value')}, not as nodata. Run the same predict again to finish it before you "
            f"{use} it."
        )


def _holes_read_as_a_class(da: Any) -> bool:
    """An integer output whose store fill value is not its nodata (written before geoarray set it)."""
    fill = getattr(da, "encoding", {}).get("fill_value")
    return fill is not None and np.issubdtype(da.dtype, np.integer) and int(fill) != _nodata(da)


def _class_names(da: Any) -> list[str] | None:
    names = da.attrs.get("classes")
    if names is None or isinstance(names, str) or len(names) == 0:
        return None
    return [str(c) for c in names]


def _nodata(da: Any) -> int:
    nd = da.attrs.get("nodata", LABEL_NODATA)
    return int(nd) if nd is not None else LABEL_NODATA


def _ids_present(pred: Any, truth: Any, p_nd: int, t_nd: int) -> list[str]:
    """Unnamed classes on both sides: ids 0..max, from one pass over both maps."""
    import dask

    pm, tm = dask.compute(pred.where(pred != p_nd).max(), truth.where(truth != t_nd).max())
    top = np.nanmax([float(pm), float(tm), -1.0])
    return [str(i) for i in range(int(top) + 1)]


def _relabel_block(a: np.ndarray, lut: np.ndarray, nodata: int, other: int) -> np.ndarray:
    a = np.asarray(a).astype(np.int64)
    out = np.full(a.shape, other, dtype=np.int32)
    ok = (a >= 0) & (a < len(lut))
    out[ok] = lut[a[ok]]
    out[a == nodata] = -1
    return out


def _relabelled(da: Any, lut: list[int], nodata: int, other: int) -> Any:
    """Ids -> ``lut[id]``; nodata -> -1 (skipped); any other id -> ``other`` (the bin after the classes)."""
    import xarray as xr

    return xr.apply_ufunc(
        _relabel_block,
        da,
        kwargs={"lut": np.asarray(lut, dtype=np.int32), "nodata": nodata, "other": other},
        dask="parallelized",
        output_dtypes=[np.int32],
    )


def topk_accuracy(logits: Any, target: Any, k: int = 1) -> float:
    """Fraction of samples whose target is among the ``k`` largest logits (rows = samples)."""
    lg = np.asarray(logits)
    tg = np.asarray(target).ravel()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricsError(f"k={k!r}; expected a positive integer (top-k).")
    if lg.ndim != 2 or len(lg) != tg.size:
        raise MetricsError(
            f"logits of shape {lg.shape} for {tg.size} targets; expected (samples, classes) with one row per target."
        )
    out = (tg < 0) | (tg >= lg.shape[1])
    if out.any():
        raise MetricsError(
            f"{int(out.sum())} targets (e.g. {tg[out][:3].tolist()}) are not class ids 0..{lg.shape[1] - 1} of "
            "the logits' columns; drop unlabelled samples (nodata) before scoring."
        )
    top = np.argsort(-lg, axis=1)[:, :k]
    return float((top == tg[:, None]).any(axis=1).mean()) if tg.size else float("nan")


def change_f1(
    pred_a: Any, pred_b: Any, truth_a: Any, truth_b: Any, *, ignore_index: int | None = None
) -> float:
    """F1 of the "changed" class: a pixel changed when its class differs between two dates."""
    pa, pb, ta, tb = (np.asarray(getattr(v, "values", v)) for v in (pred_a, pred_b, truth_a, truth_b))
    ok = np.ones(ta.shape, dtype=bool)
    if ignore_index is not None:
        ok = (ta != ignore_index) & (tb != ignore_index) & (pa != ignore_index) & (pb != ignore_index)
    pc, tc = (pa != pb)[ok], (ta != tb)[ok]
    tp = float((pc & tc).sum())
    denom = float(pc.sum() + tc.sum())
    return 2 * tp / denom if denom else float("nan")


def effective_rank(embeddings: Any) -> float:
    """exp(entropy) of the normalised singular values of centred embeddings ``(n, d)`` (RankMe)."""
    z = np.asarray(embeddings, dtype=np.float64)
    if z.ndim != 2:
        raise MetricsError(f"embeddings of shape {z.shape}; expected (samples, dims).")
    if not np.isfinite(z).all():
        raise MetricsError(
            f"{int((~np.isfinite(z)).sum())} embedding values are NaN or infinite; expected finite features "
            "(drop the rows of invalid pixels first)."
        )
    z = z - z.mean(0, keepdims=True)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))
