"""Before the first step: check the inputs, resolve bands and classes, plan the chips, compute statistics.

Statistics for normalisation come from one dask reduction over the cube's valid pixels and travel in the
checkpoint, so :func:`geoarray.predict` normalises identically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from geoarray.cube import validate_cube
from geoarray.errors import TrainError
from geoarray.training.config import FitConfig

__all__ = ["Setup", "prepare"]

log = logging.getLogger(__name__)

_LABELLED = ("segmentation", "pixel_classification")


def _device(name: str) -> str:
    from geoarray._devices import resolve_device

    return resolve_device(name, TrainError)


def _labels_of(cube: xr.Dataset, cfg: FitConfig) -> xr.DataArray | None:
    if cfg.task not in _LABELLED:
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
    if not np.issubdtype(lab.dtype, np.integer):
        raise TrainError(f"labels have dtype {lab.dtype}; expected integer class ids.")
    return lab


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


def prepare(cube: xr.Dataset, cfg: FitConfig) -> Setup:
    """Validate inputs, resolve classes and bands, compute statistics and plan the chips."""
    from geoarray.chips import plan_chips, region_labels
    from geoarray.models import create_model
    from geoarray.tasks import get_task

    lab = _labels_of(cube, cfg)  # first: its message says how to align labels, which is the usual fix
    validate_cube(cube, var=cfg.var)
    present = [str(b) for b in cube["band"].values]
    bands = list(cfg.bands) if cfg.bands else present
    missing = [b for b in bands if b not in present]
    if missing:
        raise TrainError(f"bands {missing} are not in the cube; it has {present}.")
    multilabel = cfg.multilabel or (lab is not None and "class" in lab.dims)
    task = get_task(cfg.task, loss=cfg.loss, multilabel=multilabel)

    classes: list[str] = []
    if lab is not None:
        if multilabel:
            classes = [str(c) for c in (lab.attrs.get("classes") or lab["class"].values)]
        else:
            classes = [str(c) for c in lab.attrs.get("classes", [])]
            nodata = int(lab.attrs.get("nodata", -1))
            top = int(lab.where(lab != nodata).max().compute(scheduler="threads")) if lab.size else 0
            if not classes:
                classes = [str(i) for i in range(top + 1)]
            elif top >= len(classes):
                raise TrainError(
                    f"labels hold class id {top} but attrs['classes'] names only {len(classes)} classes {classes}."
                )
    mk = dict(cfg.model_kwargs)
    if cfg.task != "classification" or lab is not None:
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

    with seeded_torch(cfg.seed, "cpu"):  # a throwaway model: leave the caller's generator alone
        probe = create_model(cfg.model, **mk)
    stream_kind = task.kind_for(probe)
    if cfg.task == "pixel_classification" and stream_kind != "pixels":
        raise TrainError(f"task 'pixel_classification' needs a pixel model (pixel_*), got {cfg.model!r}.")
    times: Any = cfg.times if stream_kind not in ("sequence", "pixels") else "all"
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
        labels=cfg.labels if lab is not None else None,
        multiple_of=multiple,
        var=cfg.var,
        seed=cfg.seed,
    )
    if cfg.task == "classification":
        if not cfg.regions or not cfg.region_property:
            raise TrainError(
                "task 'classification' needs regions= (a GeoJSON) and region_property= (its label field)."
            )
        classes = region_labels(plan, cube, cfg.regions, property=cfg.region_property)
        if mk.get("num_classes") not in (None, len(classes)):
            raise TrainError(
                f"model_kwargs num_classes={mk['num_classes']} but the regions hold {len(classes)} classes."
            )
        mk["num_classes"] = len(classes)
    task.classes = classes
    if cfg.class_weights is not None:
        task.class_weights = _class_weights(cfg.class_weights, lab, classes)
    log.info("%s", plan.summary())

    from geoarray._preprocess import band_stats

    mean, std = band_stats(cube, bands, var=cfg.var)
    ident = hashlib.sha256(
        json.dumps(
            [dict(cube.sizes), bands, [str(t) for t in cube["time"].values], str(cube.rio.crs)], default=str
        ).encode()
    ).hexdigest()[:16]
    date_encoding = getattr(probe, "date_encoding", None)
    return Setup(bands, classes, mean, std, plan, task, mk, stream_kind, ident, date_encoding)


def _class_weights(spec: Any, lab: xr.DataArray | None, classes: list[str]) -> list[float]:
    """Explicit weights, or "balanced": inverse square root of each class's pixel frequency, mean 1."""
    if spec != "balanced":
        w = [float(v) for v in spec]
        if len(w) != len(classes):
            raise TrainError(f"class_weights has {len(w)} values for {len(classes)} classes {classes}.")
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
