"""The training loop (plain PyTorch): ``geoarray.fit(cube, task=..., model=...)`` -> best checkpoint path.

Chips stream from the cube's chunks (:mod:`geoarray.chips`); statistics for normalisation come from one dask
reduction over the cube and travel in the checkpoint, so :func:`geoarray.predict` normalises identically.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from geoarray.cube import validate_cube
from geoarray.errors import TrainError

__all__ = ["FitConfig", "fit"]

log = logging.getLogger(__name__)

_LABELLED = ("segmentation", "pixel_classification")


@dataclass
class FitConfig:
    """Everything that defines a training run (what ``fit`` takes besides the cube)."""

    task: str
    model: str = "unet"
    labels: str = "labels"
    bands: list[str] | None = None
    chip_size: int = 64
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    out: str = "model.safetensors"
    device: str = "auto"
    precision: Literal["32", "bf16", "16"] = "32"
    val_fraction: float = 0.2
    seed: int = 0
    log_dir: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None
    multilabel: bool = False
    class_weights: Literal["balanced"] | list[float] | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "plateau", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    early_stopping: int | None = None
    resume: str | None = None
    times: Any = "each"
    mode: Literal["grid", "random"] = "grid"
    stride: int | None = None
    min_valid: float = 0.5
    min_positive: int = 0
    augment: bool = True
    regions: str | None = None
    region_property: str | None = None
    pixels_per_chip: int = 256
    var: str = "imagery"
    progress: bool = True
    readers: int = 2
    steps_per_epoch: int | None = None
    sensor: str | None = None


def fit(cube: xr.Dataset, *, task: str, client: Any = None, **options: Any) -> Path:
    """Train a model on a cube; save the best epoch as a self-describing checkpoint and return its path.

    Parameters
    ----------
    cube
        The cube (lazy). Supervised tasks read ``labels`` from it (``labels(y, x)``, ``labels(time, y, x)``, or
        ``labels(class, y, x)`` 0/1 masks for multi-label segmentation).
    task
        ``"segmentation"``, ``"classification"`` (chip labels from ``regions=`` + ``region_property=``) or
        ``"pixel_classification"`` (pixel time series).
    client
        A ``distributed.Client``: train with one DDP rank per worker (gloo on CPU, nccl on GPU).
    **options
        See :class:`FitConfig`: ``model``, ``model_kwargs``, ``chip_size``, ``epochs``, ``batch_size``, ``lr``,
        ``out``, ``device``, ``precision`` ("32", "bf16", "16"), ``val_fraction``, ``seed``, ``log_dir``, ``loss``
        ("ce", "focal", "bce", "bce_dice"), ``optimizer``, ``schedule``, ``warmup_epochs``,
        ``early_stopping`` (patience), ``resume`` (a checkpoint from an earlier run), ``times``, ``min_valid``,
        ``min_positive``, ``augment``, ...

    Returns
    -------
    pathlib.Path
        The best checkpoint (written atomically).

    Raises
    ------
    TrainError
        Missing labels, labels on another grid, chips that don't fit, class counts that don't match the
        model, every chip filtered out, no training tiles, or a NaN loss (named by epoch and step; nothing is
        saved from a NaN model).

    Examples
    --------
    >>> ckpt = geoarray.fit(cube, task="segmentation", model="unet", chip_size=64, epochs=5,
    ...                     batch_size=8, lr=1e-3, out="unet.safetensors")  # doctest: +SKIP
    """
    unknown = sorted(set(options) - set(FitConfig.__dataclass_fields__))
    if unknown:
        raise TrainError(
            f"fit() got unknown option(s) {unknown}; see geoarray.train.FitConfig for the options."
        )
    cfg = FitConfig(task=task, **options)
    if client is None:
        _device(cfg.device)  # a wrong device fails now, not after the statistics pass
    setup = prepare(cube, cfg)
    if client is not None:
        from geoarray.distributed import fit_ddp

        return fit_ddp(client, cube, cfg, setup)
    from geoarray._trainer import Trainer

    return Trainer(cube, cfg, setup).run()


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
    return Setup(bands, classes, mean, std, plan, task, mk, stream_kind, ident)


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


class MetricsLog:
    """Per-epoch metrics to CSV (and TensorBoard when it is installed)."""

    def __init__(self, log_dir: str | None) -> None:
        self.dir = Path(log_dir) if log_dir else None
        self.rows: list[dict[str, Any]] = []
        self.tb: Any = None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.dir:
            return
        path = self.dir / "metrics.csv"
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(float(v)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: linear warm-up, then cosine / step / constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return 0.1 ** int(3 * (step - warmup) / max(1, total - warmup))
    return 1.0


def check_finite(loss: Any, epoch: int, step: int) -> None:
    if not math.isfinite(float(loss)):
        raise TrainError(
            f"the loss became {float(loss)} at epoch {epoch}, step {step}; training stopped and nothing was saved "
            "from this state. Lower lr, check the inputs for extreme values, or use precision='32'."
        )


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # geoarray's own randomness uses seeded numpy Generators
