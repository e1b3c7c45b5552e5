"""Training objectives, one file each. A task says how a model consumes a batch and how it is scored."""

from __future__ import annotations

from typing import Any

from geoarray.errors import TrainError
from geoarray.tasks.barlow_twins import BarlowTwinsTask
from geoarray.tasks.base import Task
from geoarray.tasks.classification import ClassificationTask
from geoarray.tasks.finetune import FinetuneTask, LinearProbeTask
from geoarray.tasks.pixel_classification import PixelClassificationTask
from geoarray.tasks.segmentation import SegmentationTask
from geoarray.tasks.vicreg import VICRegTask

TASKS: dict[str, type[Task]] = {
    "segmentation": SegmentationTask,
    "classification": ClassificationTask,
    "pixel_classification": PixelClassificationTask,
    "barlow_twins": BarlowTwinsTask,
    "linear_probe": LinearProbeTask,
    "finetune": FinetuneTask,
    "vicreg": VICRegTask,
}


def get_task(name: str, **options: Any) -> Task:
    if name not in TASKS:
        raise TrainError(f"task={name!r} is unknown; expected one of {sorted(TASKS)}.")
    try:
        return TASKS[name](**options)
    except TypeError as e:  # an option this task does not take
        raise TrainError(f"task {name!r} does not take these options: {e}.") from None


__all__ = ["TASKS", "Task", "get_task"]
