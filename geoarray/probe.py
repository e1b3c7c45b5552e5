"""Evaluation protocols for learned features: :func:`probe` (linear and kNN, on a spatial split), always with the
baselines an SSL encoder must beat (a random-init encoder of the same architecture, and the raw inputs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from geoarray.errors import BandError, ProbeError

__all__ = ["probe"]

PROTOCOLS = ("linear", "knn")


def probe(
    cube: xr.Dataset,
    ckpt: str | os.PathLike[str],
    *,
    labels: str = "labels",
    protocols: Sequence[str] = PROTOCOLS,
    label_fractions: Sequence[float] = (0.01, 0.1, 1.0),
    var: str = "imagery",
    max_pixels: int = 20000,
    tile_size: int = 32,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> Any:
    """Score a pixel time-series encoder's features with linear and kNN probes, beside its baselines.

    Labelled pixels (at most ``max_pixels``, sampled) are split by spatial tile of ``tile_size`` px: a
    ``test_fraction`` of the tiles is held out. Each protocol is trained on a ``label_fraction`` of the training
    pixels and scored on the held-out ones, for three encoders: the checkpoint's (``encoder="ssl"``), the same
    architecture at random init (``"random_init"``, seeded) and the normalised raw series with their validity
    flags (``"raw"``). Labels ``(time, y, x)`` take the last date's class, as training does.

    Returns
    -------
    pandas.DataFrame
        Columns ``encoder``, ``protocol``, ``label_fraction``, ``top1``, ``top5`` (top-k with k = min(5, classes)).

    Raises
    ------
    ProbeError
        A cube without ``labels``, a checkpoint that is not a pixel time-series feature encoder, options out of
        range, or a split that leaves no labelled pixel on one side.
    BandError
        The cube lacks a band the checkpoint needs.
    """
    import pandas as pd
    import torch

    from geoarray._preprocess import date_features
    from geoarray._probe_fit import knn_scores, linear_scores, standardize
    from geoarray.checkpoint import load_checkpoint
    from geoarray.metrics import topk_accuracy
    from geoarray.models import create_model

    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ProbeError(f"protocols={list(protocols)}; expected some of {list(PROTOCOLS)}.")
    fr = [float(f) for f in label_fractions]
    if not fr or not all(0 < f <= 1 for f in fr):
        raise ProbeError(
            f"label_fractions={list(label_fractions)}; expected fractions in (0, 1], e.g. (0.01, 1.0)."
        )
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction={test_fraction!r}; expected a fraction between 0 and 1 (e.g. 0.3).")
    if labels not in cube.data_vars:
        raise ProbeError(
            f"probe needs labels, but the cube has no {labels!r} variable (it has {sorted(map(str, cube.data_vars))}). "
            "Add them with `cube['labels'] = geoarray.read_labels(path, like=cube)`, or pass labels=NAME."
        )
    ck = load_checkpoint(ckpt, device="cpu")
    meta = ck.meta
    if meta["input"].get("kind") != "pixels" or meta["output"].get("kind") != "features":
        raise ProbeError(
            f"{str(ckpt)!r} is a {meta['task']!r} checkpoint of {meta['input'].get('kind')!r} inputs; probe scores "
            "pixel time-series feature encoders (e.g. task='barlow_twins' on a pixel_* model)."
        )
    series, valid, y, test = _sample(cube, meta, labels, var, max_pixels, tile_size, test_fraction, seed)
    k = int(y.max()) + 1
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rand = create_model(meta["model"]["name"], **meta["model"]["hparams"]).eval()
    dates = date_features(cube["time"].values, meta["input"].get("date_encoding"))
    feats = {
        "ssl": _embed(ck.model, series, valid, dates),
        "random_init": _embed(rand, series, valid, dates),
        "raw": np.concatenate([series.reshape(len(series), -1), valid.astype(np.float32)], 1),
    }
    rng = np.random.default_rng(seed)
    train_idx = np.flatnonzero(~test)
    rows = []
    for f in fr:
        n = max(k, round(f * len(train_idx)))
        pick = np.sort(rng.choice(train_idx, min(n, len(train_idx)), replace=False))
        for enc, x in feats.items():
            a, b = standardize(x[pick].astype(np.float64), x[test].astype(np.float64))
            for proto in protocols:
                if proto == "knn":
                    s = knn_scores(a, y[pick], b, k)
                else:
                    s = linear_scores(a, y[pick], b, k, seed=seed)
                rows.append(
                    {
                        "encoder": enc,
                        "protocol": proto,
                        "label_fraction": f,
                        "top1": topk_accuracy(s, y[test], 1),
                        "top5": topk_accuracy(s, y[test], min(5, k)),
                    }
                )
    return pd.DataFrame(rows, columns=["encoder", "protocol", "label_fraction", "top1", "top5"])


def _sample(
    cube: xr.Dataset,
    meta: dict[str, Any],
    labels: str,
    var: str,
    max_pixels: int,
    tile_size: int,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised series ``(P, T, C)``, validity ``(P, T)``, class ids ``(P,)`` and the held-out mask ``(P,)``."""
    from geoarray._preprocess import normalize_fill
    from geoarray.chips.filters import label_nodata

    inp = meta["input"]
    present = [str(b) for b in cube["band"].values]
    missing = [b for b in inp["bands"] if b not in present]
    if missing:
        raise BandError(f"the cube lacks bands {missing} the checkpoint needs; it has {present}.")
    lab = cube[labels]
    if "time" in lab.dims:
        lab = lab.isel(time=-1)
    lv = np.asarray(lab.transpose("y", "x").values)
    nodata = label_nodata(lab)
    iy, ix = np.nonzero(lv != nodata)
    rng = np.random.default_rng(seed)
    if iy.size > max_pixels:
        keep = np.sort(rng.choice(iy.size, max_pixels, replace=False))
        iy, ix = iy[keep], ix[keep]
    tiles = (iy // tile_size) * (lv.shape[1] // tile_size + 1) + ix // tile_size
    uniq = np.unique(tiles)
    held = rng.random(uniq.size) < test_fraction
    test = np.isin(tiles, uniq[held])
    if test.all() or not test.any():
        raise ProbeError(
            f"the spatial split of {uniq.size} labelled tiles of {tile_size} px leaves "
            f"{'no training' if test.all() else 'no test'} pixel; pass a smaller tile_size or label more of the cube."
        )
    py, px = xr.DataArray(iy, dims="p"), xr.DataArray(ix, dims="p")
    img = cube[var].sel(band=list(inp["bands"])).transpose("time", "band", "y", "x").isel(y=py, x=px)
    vals = np.asarray(img.values)
    v = (
        cube["valid"].transpose("time", "y", "x").isel(y=py, x=px).values
        if "valid" in cube.data_vars
        else None
    )
    z, ok = normalize_fill(vals, v, inp["mean"], inp["std"], float(inp.get("scale", 1.0)))
    return (
        np.ascontiguousarray(z.transpose(2, 0, 1)),
        np.ascontiguousarray(ok.T),
        lv[iy, ix].astype(np.int64),
        test,
    )


def _embed(model: Any, series: np.ndarray, valid: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """The model's features of every series, 8192 at a time (eval mode, no gradients)."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(series), 8192):
            x = torch.from_numpy(series[s : s + 8192])
            v = torch.from_numpy(valid[s : s + 8192])
            d = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(dates, v.shape)))
            out.append(model(x, d, v).float().numpy())
    return np.concatenate(out)
