"""What defines a training run: :class:`FitConfig`, checked up front so bad values fail before any work."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from geoarray.errors import TrainError

__all__ = ["FitConfig"]

Precision = Literal["32", "bf16", "16"]
Schedule = Literal["cosine", "step", "plateau", "constant"]


@dataclass
class FitConfig:
    """Everything that defines a training run besides the cube; the fields are :func:`geoarray.fit`'s options.

    Grouped as in ``fit``'s signature: the task and model, the data (chips), optimisation, and runtime. The
    chip filters: ``min_valid`` is the fraction of valid pixels a chip needs; ``min_positive`` the number of
    labelled pixels it needs (label not nodata, on a valid date; class 0 counts), of ``positive_classes`` only
    when given (which alone means ``min_positive=1``). Chips without any labelled pixel are always skipped. ``init`` (the pretrained encoder of
    ``task="linear_probe"`` / ``"finetune"``, and only of them) and ``label_fraction`` (in (0, 1]) are checked
    here; the init checkpoint itself is checked against the cube by :func:`~.protocols.resolve_init`. See
    :func:`geoarray.fit`.
    """

    # task and model
    task: str
    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    # data
    labels: str = "labels"
    bands: list[str] | None = None
    var: str = "imagery"
    chip_size: int = 64
    stride: int | None = None
    mode: Literal["grid", "random"] = "grid"
    times: Any = "each"
    val_fraction: float = 0.2
    label_fraction: float = 1.0
    min_valid: float = 0.5
    min_positive: int = 0
    positive_classes: list[int] | None = None
    augment: bool = True
    regions: Any = None
    region_property: str | None = None
    region_layer: str | None = None
    pixels_per_chip: int = 256
    sensor: str | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    loss: str | None = None
    multilabel: bool = False
    class_weights: Literal["balanced"] | list[float] | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 1e-4
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    early_stopping: int | None = None
    seed: int = 0
    # runtime
    out: str = "model.safetensors"
    resume: str | None = None
    keep_state: bool = False
    device: str = "auto"
    precision: Precision = "32"
    log_dir: str | None = None
    progress: bool = True
    readers: int = 2
    steps_per_epoch: int | None = None
    debug_ddp: bool = False
    storage_options: dict[str, Any] | None = None  # fsspec options of out / resume / log_dir URLs

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def check(self) -> None:
        """Refuse values that would fail deep inside torch or silently train nothing."""
        _positive_int("chip_size", self.chip_size)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("pixels_per_chip", self.pixels_per_chip)
        _positive_int("readers", self.readers)
        for name in ("stride", "steps_per_epoch", "early_stopping"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        _non_negative_int("min_positive", self.min_positive)
        if self.positive_classes is not None:
            if isinstance(self.positive_classes, (str, bytes)) or not hasattr(
                self.positive_classes, "__iter__"
            ):
                raise TrainError(
                    f"positive_classes={self.positive_classes!r}; expected a list of class ids such as [1, 2]."
                )
            self.positive_classes = list(self.positive_classes)
            for c in self.positive_classes:
                _non_negative_int("positive_classes item", c)
            if not self.positive_classes:
                raise TrainError(
                    "positive_classes=[]; expected at least one class id, or None to count every class."
                )
        _non_negative_int("seed", self.seed)
        if not _real(self.lr) or self.lr < 0:  # 0 is allowed: it trains only BatchNorm statistics
            raise TrainError(f"lr={self.lr!r}; expected a finite learning rate >= 0, such as 1e-3.")
        if not _real(self.weight_decay) or self.weight_decay < 0:
            raise TrainError(
                f"weight_decay={self.weight_decay!r}; expected a finite number >= 0 (e.g. 1e-4)."
            )
        if not _real(self.warmup_epochs) or not 0 <= self.warmup_epochs <= self.epochs:
            raise TrainError(
                f"warmup_epochs={self.warmup_epochs!r}; expected a number between 0 and epochs={self.epochs}."
            )
        if not _real(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise TrainError(
                f"val_fraction={self.val_fraction!r}; expected 0 <= val_fraction < 1 (e.g. 0.2)."
            )
        if not _real(self.label_fraction) or not 0 < self.label_fraction <= 1:
            raise TrainError(
                f"label_fraction={self.label_fraction!r}; expected a fraction in (0, 1] of the labelled training "
                "tiles (e.g. 0.01 for 1 %, 1.0 for all)."
            )
        _check_init(self.task, self.init)
        if not _real(self.min_valid) or not 0 <= self.min_valid <= 1:
            raise TrainError(f"min_valid={self.min_valid!r}; expected a fraction between 0 and 1.")
        _choice("mode", self.mode, ("grid", "random"))
        _choice("optimizer", self.optimizer, ("adamw", "sgd"))
        _choice("schedule", self.schedule, ("cosine", "step", "plateau", "constant"))
        _choice("precision", self.precision, ("32", "bf16", "16"))
        if not isinstance(self.task_kwargs, dict):
            raise TrainError(f"task_kwargs={self.task_kwargs!r}; expected a dict such as {{'lambd': 5e-3}}.")
        if not isinstance(self.model_kwargs, dict):
            raise TrainError(f"model_kwargs={self.model_kwargs!r}; expected a dict such as {{'width': 16}}.")
        import torch

        from geoarray.models import create_model

        # a bad name, type or size fails now, not after a pass over the data; on the meta device building
        # allocates nothing and draws no random numbers (about 10 ms). A protocol left at the default model
        # takes its model from init, which fit checks next.
        if not (self.task in PROTOCOLS and self.model == "unet"):
            with torch.device("meta"):
                create_model(self.model, **self.model_kwargs)
        if not str(self.out):
            raise TrainError(
                "out=''; expected the path of the checkpoint to write, e.g. 'model.safetensors'."
            )


#: tasks that evaluate a pretrained encoder: they need init=, and only they take it
PROTOCOLS = ("linear_probe", "finetune")


def _check_init(task: str, init: Any) -> None:
    if task in PROTOCOLS and init is None:
        raise TrainError(
            f"task {task!r} evaluates a pretrained encoder, but init=None; expected init= the checkpoint of a "
            "feature encoder (e.g. from task='barlow_twins'), such as init='bt.safetensors'."
        )
    if init is not None and task not in PROTOCOLS:
        raise TrainError(
            f"init={init!r} starts from a pretrained encoder, which task {task!r} does not take; expected "
            f"task='linear_probe' or 'finetune' with init=, or no init= (resume= continues a run of {task!r})."
        )
    if init is not None and (not isinstance(init, str) or not init):
        raise TrainError(f"init={init!r}; expected the path of a checkpoint file (.safetensors).")


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
        raise TrainError(f"{name}={v!r}; expected a positive integer.")


def _non_negative_int(name: str, v: Any) -> None:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
        raise TrainError(f"{name}={v!r}; expected an integer >= 0.")


def _choice(name: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise TrainError(f"{name}={v!r}; expected one of {', '.join(map(repr, allowed))}.")
