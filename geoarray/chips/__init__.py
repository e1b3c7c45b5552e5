"""Chips: windows over a cube (:mod:`.plan`), which of them a run keeps (:mod:`.filters`), chip labels from
vector regions (:mod:`.regions`), and the threaded batch stream that feeds torch (:mod:`.stream`).

A chip is a :class:`Window` (index slices into the cube), never a copy. Windows are planned inside *tiles*
(the split unit) and tiles inside *read blocks* (whole storage chunks), so the stream reads each block once
per epoch and cuts every chip it needs from it: read amplification ~1. Validation tiles are whole tiles,
and training chips keep ``buffer`` pixels away from them, so no training chip touches validation pixels.
"""

from __future__ import annotations

from geoarray.chips.plan import ChipPlan, Rect, Window, plan_chips
from geoarray.chips.regions import region_labels
from geoarray.chips.stream import Batch, ChipStream

__all__ = ["Batch", "ChipPlan", "ChipStream", "Rect", "Window", "plan_chips", "region_labels"]
