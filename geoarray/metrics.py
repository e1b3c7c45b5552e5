"""Scores: confusion matrix, per-class IoU / Dice / precision / recall / F1, top-k, change F1, effective rank.

Every function takes numpy arrays, or xarray/dask arrays (reduced chunk by chunk, never loaded whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geoarray.errors import CubeError

__all__ = ["change_f1", "confusion_matrix", "effective_rank", "scores", "topk_accuracy"]


def _bincount_block(p: np.ndarray, t: np.ndarray, n: int, ignore: int | None) -> np.ndarray:
    p = np.asarray(p).ravel().astype(np.int64)
    t = np.asarray(t).ravel().astype(np.int64)
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


def topk_accuracy(logits: Any, target: Any, k: int = 1) -> float:
    """Fraction of samples whose target is among the ``k`` largest logits (rows = samples)."""
    lg = np.asarray(logits)
    tg = np.asarray(target).ravel()
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
    z = z - z.mean(0, keepdims=True)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))
