"""Pixel time-series classification (seed 001): every pixel's (T, C) series to one class."""

from __future__ import annotations

from geoarray.tasks.base import Task


class PixelClassificationTask(Task):
    name = "pixel_classification"
    default_loss = "ce"
