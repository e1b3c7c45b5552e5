"""Semantic segmentation: multi-class softmax (CE or focal) or multi-label sigmoid (BCE, BCE + soft Dice)."""

from __future__ import annotations

from geoarray.tasks.base import Task


class SegmentationTask(Task):
    name = "segmentation"
    default_loss = "ce"
