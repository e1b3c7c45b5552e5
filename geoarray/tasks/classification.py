"""Chip classification (seed 002): one label per chip, from a region vector file."""

from __future__ import annotations

from typing import Any

from geoarray.tasks.base import Task


class ClassificationTask(Task):
    name = "classification"
    default_loss = "ce"
    reads_label_raster = scores_with_label_raster = False  # chip labels come from regions=

    def kind_for(self, model: Any) -> str:
        return "chip"

    def summarize(self, state: dict[str, Any]) -> dict[str, float]:
        out = super().summarize(state)
        out["score"] = out["val_accuracy"]  # top-1 accuracy ranks chip classifiers
        return out
