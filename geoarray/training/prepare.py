"""Before the first step: check the inputs, resolve bands and classes, plan the chips, compute statistics.

Statistics for normalisation come from one dask reduction over the cube's valid pixels and travel in the
checkpoint, so :func:`geoarray.predict` normalises identically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import xarray as xr

from geoarray.cube import validate_cube
from geoarray.errors import GeoArrayWarning, TrainError
from geoarray.training.config import FitConfig
from geoarray.training.protocols import as_task, protocol_setup

__all__ = ["Setup", "prepare"]

log = logging.getLogger(__name__)

_LABELLED = ("segmentation", "pixel_classification")
#: tasks that train without labels and, when the cube has them, score validation with them (a kNN probe)
_LABELS_OPTIONAL = ("barlow_twins",)
#: self-supervised tasks: they train a model's embedding (``num_classes=0`` unless given)
_FEATURE_TASKS = ("barlow_twins", "vicreg")


def _device(name: str) -> str:
    from geoarray._devices import resolve_device

    return resolve_device(name, TrainError)


def _labels_of(cube: xr.Dataset, cfg: FitConfig) -> xr.DataArray | None:
    task = as_task(cfg)
    if task in _LABELS_OPTIONAL:  # single-label class ids only; others train without them
        present = cube.data_vars.get(cfg.labels)
        if present is None or "class" in present.dims:
            return None
    elif task not in _LABELLED:
        return None
    if cfg.labels not in cube.data_vars:
        raise TrainError(
            f"task {cfg.task!r} needs labels, but the cube has no {cfg.labels!r} variable (it has "
            f"{sorted(map(str, cube.data_vars))}). Add them with `ds['labels'] = geoarray.read_labels(path, ds)`."
        )
    lab = cube[cfg.labels]
    for dim in ("y", "x"):
        if dim not in lab.dims or lab.sizes[dim] != cube.sizes[dim]:
            raise TrainError(
                f"labels are on another grid ({dict(lab.sizes)} vs the cube's y={cube.sizes['y']}, "
                f"x={cube.sizes['x']}); align them with `geoarray.read_labels(path, like=cube)`."
            )
    extra = [str(d) for d in lab.dims if d not in ("y", "x")]
    if len(extra) > 1 or extra[:1] not in ([], ["time"], ["class"]):
        raise TrainError(
            f"labels {cfg.labels!r} have dims {tuple(map(str, lab.dims))}; expected class ids (y, x) or (time, y, x), "
            f"or 0/1 masks (class, y, x). Pass labels= the cube's label variable (it has {sorted(map(str, cube.data_vars))})."
        )
    if lab.dtype == bool:
        raise TrainError(
            f"labels {cfg.labels!r} have dtype bool; expected integer class ids. Convert them with "
            f"`ds[{cfg.labels!r}] = ds.{cfg.labels}.astype('uint8')` (False is class 0, True class 1)."
        )
    if not np.issubdtype(lab.dtype, np.integer):
        raise TrainError(
            f"labels {cfg.labels!r} have dtype {lab.dtype}; expected integer class ids. A label raster opened "
            "with NaN for nodata (e.g. rioxarray's mask_and_scale=True) is float: convert it with "
            f"`ds[{cfg.labels!r}] = ds.{cfg.labels}.fillna(255).astype('uint8')` and set its attrs['nodata'] = 255, "
            "or read it with geoarray.read_labels(path, like=ds)."
        )
    return lab


def _classes_of(lab: xr.DataArray, name: str, multilabel: bool) -> list[str]:
    """Class names, after one pass over the labels that refuses ids they cannot train on."""
    from geoarray.chips.filters import label_nodata

    nodata = label_nodata(lab)
    hint = (
        f"(attrs['nodata'] = {nodata})"
        if nodata != -1
        else "(no attrs['nodata']: only -1 means 'no label'; set it, e.g. to 255)"
    )
    held = lab.where(lab != nodata)
    lo, hi = (float(v) for v in dask.compute(held.min(), held.max(), scheduler="threads"))
    if math.isnan(hi):
        raise TrainError(
            f"labels {name!r} are nodata {hint} in every pixel; expected class ids in at least some. Check "
            "that the label raster overlaps the cube (geoarray.read_labels(path, like=cube) fills the rest "
            "with nodata) and that attrs['nodata'] is the value meaning 'no label'."
        )
    if multilabel:
        classes = [str(c) for c in (lab.attrs.get("classes") or lab["class"].values)]
        if lo < 0 or hi > 1:
            raise TrainError(
                f"multi-label labels {name!r} hold values {lo:g}..{hi:g} {hint}; expected 0/1 masks per class "
                "and nodata."
            )
        return classes
    if lo < 0:
        raise TrainError(
            f"labels {name!r} hold the negative id {int(lo)} {hint}; expected class ids 0, 1, ... . If "
            f"{int(lo)} means 'no label', set attrs['nodata'] = {int(lo)}."
        )
    named = lab.attrs.get("classes", [])
    if isinstance(named, (str, bytes)) or not hasattr(named, "__len__"):
        raise TrainError(
            f"labels {name!r} have attrs['classes'] = {named!r}; expected a list of class names, one per id, "
            "such as ['water', 'forest']."
        )
    classes = [str(c) for c in named]
    top = int(hi)
    if not classes:
        classes = [str(i) for i in range(top + 1)]
        _warn_if_codes(held, name, top)
    elif top >= len(classes):
        raise TrainError(
            f"labels {name!r} hold class id {top} {hint} but attrs['classes'] names only {len(classes)} "
            f"classes {classes} (ids 0..{len(classes) - 1}). Name every class in attrs['classes'], or if {top} "
            f"means 'no label', set attrs['nodata'] = {top}."
        )
    if lo == hi:
        raise TrainError(
            f"labels {name!r} hold a single class, {top} ({classes[top]!r}), in every labelled pixel {hint}; "
            "expected at least two classes to learn to tell apart. Label examples of the other classes "
            "(e.g. background as 0) too."
        )
    return classes


def _fit_timesteps(cfg: FitConfig, mk: dict[str, Any], n_times: int) -> None:
    """Models built for a fixed number of dates (``num_timesteps``, e.g. pixel_mlp) get the cube's."""
    from geoarray.models import model_info

    if "num_timesteps" not in model_info(cfg.model):
        return
    want = mk.setdefault("num_timesteps", n_times)
    if want != n_times:
        raise TrainError(
            f"model_kwargs num_timesteps={want} but the cube has {n_times} dates; {cfg.model!r} takes a fixed "
            f"number of dates. Drop num_timesteps (it is then {n_times}), or select {want} dates "
            f"(cube.isel(time=...)), or use a model that takes any number of dates (pixel_cnn, "
            "pixel_transformer)."
        )


def _warn_if_codes(held: xr.DataArray, name: str, top: int) -> None:
    """Unnamed labels whose ids are codes (NLCD's 11, 21, ..., 95), not indices 0..K-1: most outputs unused."""
    if top < 8 or top > 65535:
        return
    import dask.array as dsa

    ids = dsa.asarray(held.fillna(top + 1).astype("int64").data).ravel()  # nodata -> bin top + 1
    counts = np.asarray(dask.compute(dsa.bincount(ids, minlength=top + 2), scheduler="threads")[0])[: top + 1]
    used = np.flatnonzero(counts).tolist()
    if len(used) * 2 <= top + 1:
        warnings.warn(
            f"labels {name!r} use {len(used)} distinct ids {used[:12]}{' ...' if len(used) > 12 else ''} and no "
            f"attrs['classes']; read as class indices they make {top + 1} classes (0..{top}), {top + 1 - len(used)} "
            "of which never occur, so the model gets as many unused outputs. If the ids are codes (e.g. land-cover "
            "codes), remap them to 0..K-1 and name them in attrs['classes'].",
            GeoArrayWarning,
            stacklevel=4,
        )


def _models_of_kind(kinds: tuple[str, ...]) -> list[str]:
    """Registry names whose models take ``kinds`` of input (read from the factories' return annotations)."""
    import typing

    from geoarray.models import list_models
    from geoarray.models._registry import _get

    out = []
    for name in list_models():
        try:
            ret = typing.get_type_hints(_get(name)).get("return")
        except Exception:  # a factory without a resolvable annotation: leave it out of the hint
            continue
        if getattr(ret, "input_kind", None) in kinds:
            out.append(name)
    return out


_TASK_KINDS = {
    "segmentation": ("image", "sequence", "pixels"),
    "classification": ("chip",),
    "pixel_classification": ("pixels",),
    "barlow_twins": ("pixels", "chip"),
    "linear_probe": ("pixels", "chip"),
    "finetune": ("pixels", "chip"),
    "vicreg": ("chip",),
}
_KIND_WORDS = {
    "image": "a map per pixel",
    "sequence": "a map per pixel and date",
    "pixels": "one class per pixel time series",
    "chip": "one class per chip",
}


def _check_model_fits_task(cfg: FitConfig, probe: Any) -> None:
    kind = str(getattr(probe, "input_kind", "image"))
    allowed = _TASK_KINDS.get(cfg.task)
    if allowed is None or kind in allowed:
        return
    better = next((t for t, ks in _TASK_KINDS.items() if kind in ks and t != "segmentation"), "segmentation")
    raise TrainError(
        f"model {cfg.model!r} outputs {_KIND_WORDS.get(kind, kind)}, which task {cfg.task!r} cannot train; "
        f"expected one of {_models_of_kind(allowed)} for it, or task={better!r} for {cfg.model!r}."
    )


@dataclass
class Setup:
    """What prepare() resolved: bands, classes, statistics, the chip plan and the task."""

    bands: list[str]
    classes: list[str]
    mean: list[float]
    std: list[float]
    plan: Any
    task: Any
    model_kwargs: dict[str, Any]
    stream_kind: str
    identity: str
    date_encoding: str | None = None
    #: the task the checkpoint records (a protocol's supervised task) and what it records of the run's origin
    saved_task: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


def prepare(cube: xr.Dataset, cfg: FitConfig) -> Setup:
    """Validate inputs, resolve classes and bands, compute statistics and plan the chips."""
    from geoarray.chips import plan_chips, region_labels
    from geoarray.models import create_model
    from geoarray.tasks import get_task

    lab = _labels_of(cube, cfg)  # its message says how to align labels, which is the usual fix
    validate_cube(cube, var=cfg.var)
    kind_task = as_task(cfg)  # a protocol (linear_probe, finetune) runs as its encoder's supervised task
    present = [str(b) for b in cube["band"].values]
    bands = list(cfg.bands) if cfg.bands else present
    missing = [b for b in bands if b not in present]
    if missing:
        raise TrainError(f"bands {missing} are not in the cube; it has {present}.")
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if twice:
        raise TrainError(f"bands={bands} lists {twice} more than once; expected each band once.")
    if kind_task != "classification" and (cfg.regions is not None or cfg.region_property is not None):
        raise TrainError(
            f"regions= / region_property= label whole chips for task='classification'; task {cfg.task!r} reads "
            f"its labels from the cube's {cfg.labels!r} variable. Drop regions=, or rasterise the regions into "
            "the labels (e.g. rasterio.features.rasterize onto the cube's grid)."
        )
    multilabel = cfg.multilabel or (lab is not None and "class" in lab.dims)
    task = get_task(cfg.task, loss=cfg.loss, multilabel=multilabel, **cfg.task_kwargs)

    classes = _classes_of(lab, cfg.labels, multilabel) if lab is not None else []
    mk = dict(cfg.model_kwargs)
    if kind_task in _LABELLED:
        if classes:
            want = mk.get("num_classes")
            if want is not None and int(want) != len(classes):
                raise TrainError(
                    f"model_kwargs num_classes={want} but the labels have {len(classes)} classes {classes}; "
                    f"drop num_classes or make it {len(classes)}."
                )
            mk["num_classes"] = len(classes)
    mk.setdefault("in_channels", len(bands))
    if mk["in_channels"] != len(bands):
        raise TrainError(
            f"model_kwargs in_channels={mk['in_channels']} but {len(bands)} bands {bands} are used."
        )

    _fit_timesteps(cfg, mk, cube.sizes["time"])

    with seeded_torch(cfg.seed, "cpu"):  # a throwaway model: leave the caller's generator alone
        probe = create_model(cfg.model, **mk)
    _check_model_fits_task(cfg, probe)
    if cfg.task in _FEATURE_TASKS and "num_classes" not in mk and probe.out_channels != getattr(probe, "feature_dim", None):
        mk["num_classes"] = 0  # a self-supervised task trains the backbone's embedding (resnets default to 10 classes)
        with seeded_torch(cfg.seed, "cpu"):
            probe = create_model(cfg.model, **mk)
    task.check(probe, cube.sizes["time"])
    stream_kind = task.kind_for(probe)
    if kind_task == "classification" and (cfg.min_positive or cfg.positive_classes is not None):
        raise TrainError(
            f"min_positive={cfg.min_positive} / positive_classes={cfg.positive_classes} count labelled pixels of "
            "a label raster; task 'classification' labels whole chips from regions=, so expected min_positive=0 "
            "and no positive_classes."
        )
    if cfg.positive_classes is not None and classes:
        bad = [c for c in cfg.positive_classes if not 0 <= c < len(classes)]
        if bad:
            raise TrainError(
                f"positive_classes={cfg.positive_classes} names ids {bad} that the labels do not have; expected "
                f"ids 0..{len(classes) - 1} of {classes}."
            )
    times: Any = cfg.times if stream_kind not in ("sequence", "pixels") else "all"
    times = task.plan_times(times)  # e.g. VICReg's temporal positives take every date of a chip
    multiple = probe.stride if stream_kind in ("image", "sequence") else 1
    plan = plan_chips(
        cube,
        chip_size=cfg.chip_size,
        mode=cfg.mode,
        stride=cfg.stride,
        times=times,
        val_fraction=cfg.val_fraction,
        min_valid=cfg.min_valid,
        min_positive=cfg.min_positive,
        positive_classes=cfg.positive_classes,
        labels=cfg.labels if lab is not None and task.reads_label_raster else None,
        multiple_of=multiple,
        var=cfg.var,
        seed=cfg.seed,
    )
    if kind_task == "classification":
        if not cfg.regions or not cfg.region_property:
            raise TrainError(
                "task 'classification' needs regions= (a GeoJSON) and region_property= (its label field)."
            )
        classes = region_labels(plan, cube, cfg.regions, property=cfg.region_property, layer=cfg.region_layer)
        if mk.get("num_classes") not in (None, len(classes)):
            raise TrainError(
                f"model_kwargs num_classes={mk['num_classes']} but the regions hold {len(classes)} classes."
            )
        mk["num_classes"] = len(classes)
        seen = sorted({int(w.label) for w in plan.train if w.label is not None})
        if len(seen) < 2:
            raise TrainError(
                f"every training chip lies in regions of one class, {classes[seen[0]]!r} (the regions name "
                f"{classes}); expected chips of at least two classes. Check that the regions of the other "
                "classes overlap the cube, or lower val_fraction."
            )
    provenance = protocol_setup(cfg, plan, supervised=kind_task in (*_LABELLED, "classification"))
    task.classes = classes
    if cfg.class_weights is not None:
        task.class_weights = _class_weights(cfg.class_weights, lab, classes)
    if cfg.val_fraction > 0 and not plan.val:
        warnings.warn(
            f"no validation chip is left after the chip filters (dropped: "
            f"{ {k: v for k, v in plan.dropped.items() if v} }); expected some, to pick the best epoch. The best "
            "epoch is picked by training loss instead. Label more of the held-out tiles, change seed= (another "
            "split), or lower min_valid / min_positive.",
            GeoArrayWarning,
            stacklevel=3,
        )
    log.info("%s", plan.summary())

    from geoarray._preprocess import band_stats

    if cfg.init is not None:  # the encoder was trained on its own statistics: normalise with them
        mean, std = provenance.pop("mean"), provenance.pop("std")
    else:
        mean, std = band_stats(cube, bands, var=cfg.var)
    ident = hashlib.sha256(
        json.dumps(
            [dict(cube.sizes), bands, [str(t) for t in cube["time"].values], str(cube.rio.crs)], default=str
        ).encode()
    ).hexdigest()[:16]
    # the checkpoint records hparams["date_encoding"] (see save_checkpoint): train with the same value
    date_encoding = probe.hparams.get("date_encoding", getattr(probe, "date_encoding", None))
    if cfg.init is not None:
        date_encoding = provenance.pop("date_encoding") or date_encoding
    return Setup(
        bands, classes, mean, std, plan, task, mk, stream_kind, ident, date_encoding, kind_task, provenance
    )


def _class_weights(spec: Any, lab: xr.DataArray | None, classes: list[str]) -> list[float]:
    """Explicit weights, or "balanced": inverse square root of each class's pixel frequency, mean 1."""
    if spec != "balanced":
        w = [float(v) for v in spec]
        if len(w) != len(classes):
            raise TrainError(f"class_weights has {len(w)} values for {len(classes)} classes {classes}.")
        if not all(math.isfinite(v) and v >= 0 for v in w) or not any(w):
            raise TrainError(
                f"class_weights={w}; expected finite weights >= 0, at least one of them > 0 (e.g. 1 per class)."
            )
        return w
    if lab is None or "class" in lab.dims:
        raise TrainError("class_weights='balanced' needs single-label class ids in the labels.")
    from geoarray.metrics import confusion_matrix

    k = len(classes)
    counts = np.diag(confusion_matrix(lab, lab, k)).astype(
        np.float64
    )  # per-class pixel counts, one dask pass
    inv = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    return [float(v) for v in inv / inv[counts > 0].mean()]


@contextmanager
def seeded_torch(seed: int, device: str) -> Iterator[None]:
    """Seed torch's generators for the block inside, and give the caller's generator state back afterwards.

    Model initialisation and dropout use torch's global generators (torch has no per-module generator), so
    they are seeded here, inside ``torch.random.fork_rng``; geoarray's own randomness (chips, shuffles,
    augmentation) uses seeded numpy Generators.
    """
    import torch

    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(seed)
        yield
