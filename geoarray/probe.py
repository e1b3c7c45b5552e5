"""Evaluation protocols for learned features: :func:`probe` (linear and kNN, on a spatial split), always with the
baselines an SSL encoder must beat (a random-init encoder of the same architecture, and the raw inputs).

The data flow: the labels (a label raster, or vector regions burnt onto the grid) -> the samples of the encoder's
kind (pixels: :mod:`._probe_pixels`; chips: :mod:`._probe_chips`) and their features per encoder -> the protocols
(:mod:`._probe_fit`) -> one row per encoder, protocol and label fraction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from geoarray.errors import BandError, ProbeError, TrainError

__all__ = ["probe"]

PROTOCOLS = ("linear", "knn")


def probe(
    cube: xr.Dataset,
    ckpt: str | os.PathLike[str],
    *,
    labels: str = "labels",
    regions: str | os.PathLike[str] | Any = None,
    region_property: str | None = None,
    region_layer: str | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    label_fractions: Sequence[float] = (0.01, 0.1, 1.0),
    var: str = "imagery",
    chip_size: int | None = None,
    max_pixels: int = 20000,
    max_chips: int = 5000,
    tile_size: int | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> Any:
    """Score an encoder's features with linear and kNN probes, beside its baselines.

    Pixel time-series encoders (``pixel_*`` models, e.g. ``task="barlow_twins"``) are scored per labelled pixel;
    chip encoders (``resnet18``/``resnet50``: a VICReg encoder, or a chip classifier's pooled embedding) per
    labelled chip of ``chip_size`` px, on the grid :func:`geoarray.predict_chips` uses, one sample per chip and
    date. Samples (at most ``max_pixels`` pixels or ``max_chips`` chips) are split by spatial tile of
    ``tile_size`` px: a ``test_fraction`` of the tiles is held out. Each protocol is trained on a
    ``label_fraction`` of the training samples and scored on the held-out ones, for three encoders: the
    checkpoint's (``encoder="ssl"``), the same architecture at random init (``"random_init"``, seeded) and the
    raw inputs (``"raw"``: for pixels the normalised series with their validity flags, for chips each band's mean
    and standard deviation over the normalised chip).

    Parameters
    ----------
    cube
        The cube; it needs ``labels`` or ``regions``.
    ckpt
        A feature encoder (pixel or chip), or a chip classifier (its pooled embedding is scored).
    labels
        The label variable: ``labels(y, x)`` or ``labels(time, y, x)``. Pixels take the last date's class, as
        training does; a chip takes the majority class of its labelled pixels (``nodata`` ignored), on its own
        date for ``labels(time, y, x)``.
    regions, region_property, region_layer
        Vector regions instead of ``labels`` (any format GDAL reads, or a GeoDataFrame), burnt onto the grid by
        the value of ``region_property``: a chip's label is its majority region, a pixel's the region it is in.
    protocols, label_fractions
        Some of ``("linear", "knn")``; fractions in (0, 1] of the training samples.
    chip_size
        Chip encoders: chip size in pixels (default: the checkpoint's training chip size).
    max_pixels, max_chips
        Samples drawn (seeded) when there are more.
    tile_size
        Split tile size in pixels; default 32 for pixels, twice the chip size for chips.
    test_fraction, seed
        Held-out fraction of tiles; the seed of sampling, the split and the random-init encoder.

    Returns
    -------
    pandas.DataFrame
        Columns ``encoder``, ``protocol``, ``label_fraction``, ``top1``, ``top5`` (top-k with k = min(5, classes)).

    Raises
    ------
    ProbeError
        A cube without ``labels`` and no ``regions``, unreadable regions or regions without ``region_property``,
        a checkpoint that is not an encoder probe can score, options out of range, or a split that leaves no
        labelled sample on one side.
    BandError
        The cube lacks a band the checkpoint needs.

    Examples
    --------
    >>> df = geoarray.probe(cube, "vicreg.safetensors", regions="countries.gpkg",
    ...                     region_property="country")  # doctest: +SKIP
    >>> df.pivot_table(index="encoder", columns="protocol", values="top1")  # doctest: +SKIP
    """
    import pandas as pd
    import torch

    from geoarray._probe_fit import knn_scores, linear_scores, standardize
    from geoarray.checkpoint import load_checkpoint
    from geoarray.cube import conform_cube
    from geoarray.metrics import topk_accuracy
    from geoarray.models import create_model

    # "knn" is one protocol, not three letters
    protocols = (protocols,) if isinstance(protocols, str) else protocols
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ProbeError(f"protocols={list(protocols)}; expected some of {list(PROTOCOLS)}.")
    fr = _fractions(label_fractions)
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction={test_fraction!r}; expected a fraction between 0 and 1 (e.g. 0.3).")
    _check_counts(
        seed=seed, max_pixels=max_pixels, max_chips=max_chips, chip_size=chip_size, tile_size=tile_size
    )
    # the cube contract, as predict checks it: dates out of order would feed a pixel encoder shuffled series
    cube = conform_cube(cube, var=var)
    if regions is None and labels not in cube.data_vars:
        raise ProbeError(
            f"probe needs labels, but the cube has no {labels!r} variable (it has {sorted(map(str, cube.data_vars))}) "
            "and no regions= were given. Add them with `cube['labels'] = geoarray.read_labels(path, like=cube)`, "
            "pass labels=NAME, or pass regions=PATH with region_property=NAME."
        )
    if regions is not None and not region_property:
        raise ProbeError(
            "regions= needs region_property=, the property that holds each region's class (e.g. 'country')."
        )
    ck = load_checkpoint(ckpt, device="cpu")
    meta = ck.meta
    kind = _encoder_kind(meta, str(ckpt))
    present = [str(b) for b in cube["band"].values]
    missing = [b for b in meta["input"]["bands"] if b not in present]
    if missing:
        raise BandError(f"the cube lacks bands {missing} the checkpoint needs; it has {present}.")
    if "valid" not in cube.data_vars:  # the imagery's declared nodata masks its fill, as in predict
        from geoarray._preprocess import declared_valid

        declared = declared_valid(cube[var], [str(b) for b in meta["input"]["bands"]])
        if declared is not None:
            cube = cube.assign(valid=declared)
    lv, nodata = _label_array(cube, labels, regions, region_property, region_layer, per_date=kind == "chip")
    _need_two_classes(np.unique(lv[lv != nodata]), "labelled pixel")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rand = create_model(meta["model"]["name"], **meta["model"]["hparams"]).eval()
    if kind == "chip":
        from geoarray._probe_chips import chip_features

        size = chip_size if chip_size is not None else meta.get("training", {}).get("chip_size")
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ProbeError(
                f"chip_size={size!r}; pass chip_size= (pixels): the checkpoint does not record its chip size."
            )
        feats, y, test = chip_features(
            cube, ck, rand, lv, nodata, var=var, chip_size=int(size), max_chips=max_chips,
            tile_size=int(tile_size or 2 * size), test_fraction=test_fraction, seed=seed,
        )  # fmt: skip
    else:
        from geoarray._probe_pixels import pixel_features

        feats, y, test = pixel_features(
            cube, ck, rand, lv[-1], nodata, var=var, max_pixels=max_pixels, tile_size=int(tile_size or 32),
            test_fraction=test_fraction, seed=seed,
        )  # fmt: skip
    _need_two_classes(np.unique(y), "chip probe sampled" if kind == "chip" else "pixel probe sampled")
    _warn_thin(y, test, "chips" if kind == "chip" else "pixels")
    k = int(y.max()) + 1
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


def _fractions(label_fractions: Any) -> list[float]:
    """``label_fractions`` as a list of floats in (0, 1]; one number is taken as one fraction."""
    if isinstance(label_fractions, (int, float, np.number)) and not isinstance(label_fractions, bool):
        label_fractions = [label_fractions]
    try:
        fr = [float(f) for f in label_fractions]
        shown: Any = list(label_fractions)
    except (TypeError, ValueError):
        fr, shown = [], label_fractions
    if not fr or not all(0 < f <= 1 for f in fr):
        raise ProbeError(f"label_fractions={shown!r}; expected fractions in (0, 1], e.g. (0.01, 1.0).")
    return fr


def _need_two_classes(found: np.ndarray, what: str) -> None:
    """Refuse a probe of one class: every protocol of every encoder would score top-1 = 1.0."""
    if found.size == 0:
        raise ProbeError(
            "no pixel is labelled (every one is nodata, or outside every region); expected labels or regions "
            "over part of the cube."
        )
    if found.size < 2:
        raise ProbeError(
            f"every {what} is class {int(found[0])}; a probe needs labels of at least 2 classes (with one, every "
            "encoder scores top-1 = 1.0). Label more classes, or pass labels= / regions= that hold several."
        )


#: fewer held-out samples than this make top-1 a coarse number (each sample moves it by more than 5 %)
MIN_TEST = 20


def _warn_thin(y: np.ndarray, test: np.ndarray, what: str) -> None:
    """Warn when the scores cannot mean much: few held-out samples, or held-out classes never trained on."""
    import warnings

    from geoarray.errors import GeoArrayWarning

    n_test = int(test.sum())
    unseen = sorted(set(np.unique(y[test]).tolist()) - set(np.unique(y[~test]).tolist()))
    why = []
    if n_test < MIN_TEST:
        why.append(f"only {n_test} held-out {what} (each one moves top-1 by {100 / n_test:.0f} %)")
    if unseen:
        why.append(f"held-out classes {unseen} have no training sample (no protocol can predict them)")
    if why:
        warnings.warn(
            f"probe's split is thin: {'; '.join(why)}; expected at least {MIN_TEST} held-out {what} of classes "
            "seen in training. Label more of the cube, or pass a smaller tile_size (or chip_size).",
            GeoArrayWarning,
            stacklevel=3,
        )


def _check_counts(**values: Any) -> None:
    """``seed`` >= 0; ``max_pixels``, ``max_chips`` and (unless None) ``chip_size`` / ``tile_size`` >= 1."""
    for name, v in values.items():
        if v is None and name in ("chip_size", "tile_size"):
            continue
        low = 0 if name == "seed" else 1
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            what = "a non-negative integer" if name == "seed" else "a positive integer"
            raise ProbeError(f"{name}={v!r}; expected {what}.")


def _encoder_kind(meta: dict[str, Any], ckpt: str) -> str:
    """``"pixels"`` or ``"chip"``: the encoders probe scores (pixel feature encoders; chip encoders and
    classifiers, whose pooled embedding is the feature)."""
    inp, out = meta["input"].get("kind"), meta["output"].get("kind")
    if inp == "pixels" and out == "features":
        return "pixels"
    if inp == "chip" and out in ("features", "classification"):
        return "chip"
    raise ProbeError(
        f"{ckpt!r} is a {meta['task']!r} checkpoint of {inp!r} inputs; probe scores pixel time-series feature "
        "encoders (e.g. task='barlow_twins' on a pixel_* model) and chip encoders (resnet18/resnet50, e.g. "
        "task='vicreg', or a chip classifier)."
    )


def _label_array(
    cube: xr.Dataset,
    labels: str,
    regions: Any,
    region_property: str | None,
    region_layer: str | None,
    *,
    per_date: bool,
) -> tuple[np.ndarray, int]:
    """Class ids ``(L, y, x)`` (L = 1, or one per date for ``labels(time, y, x)`` when ``per_date``) and nodata."""
    from geoarray.chips.filters import label_nodata

    if regions is not None:
        from geoarray.chips.regions import rasterize_regions

        try:
            ids, _ = rasterize_regions(cube, regions, property=str(region_property), layer=region_layer)
        except TrainError as e:  # the same message; probe's own error type
            raise ProbeError(str(e)) from None
        return ids[None], -1
    lab = cube[labels]
    if "class" in lab.dims:
        raise ProbeError(
            f"{labels!r} has dims {tuple(map(str, lab.dims))}: multi-label masks; probe scores single-label "
            "classes (labels(y, x) or labels(time, y, x))."
        )
    if not set(map(str, lab.dims)) <= {"time", "y", "x"} or not {"y", "x"} <= set(map(str, lab.dims)):
        raise ProbeError(
            f"{labels!r} has dims {tuple(map(str, lab.dims))}; expected a class map labels(y, x) or "
            "labels(time, y, x). Pass labels= the cube's label variable."
        )
    if lab.dtype.kind not in "iu":
        raise ProbeError(
            f"{labels!r} holds {lab.dtype} values; expected integer class ids. Convert them, e.g. "
            f"`cube[{labels!r}] = cube[{labels!r}].fillna(255).astype('uint8')` with attrs nodata=255."
        )
    if "time" in lab.dims and not per_date:
        lab = lab.isel(time=-1)  # pixels: the last date's class, as training does
    dims = ("time", "y", "x") if "time" in lab.dims else ("y", "x")
    lv = np.asarray(lab.transpose(*dims).values)
    return (lv if lv.ndim == 3 else lv[None]), label_nodata(lab)
