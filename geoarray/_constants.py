"""Values shared across stages: one home, so training, predict, I/O and metrics agree on them."""

from __future__ import annotations

IGNORE = -100
"""Target value the losses and the validation scores skip (torch's ``CrossEntropyLoss`` default)."""

LABEL_NODATA = 255
"""Default ``nodata`` of label rasters made by geoarray (``read_labels``, the sample data)."""

MASK_NODATA = 255
"""``nodata`` (and Zarr ``fill_value``) of predicted uint8 masks: an unwritten chunk never reads as a class."""

MASK_NODATA_WIDE = 65535
"""``nodata`` of predicted masks with 255 classes or more (stored as uint16)."""

DEFAULT_CHUNK = 512
"""Spatial chunk size (y and x) of cubes geoarray writes."""

COMPLETE = "geoarray_complete"
"""Attr of predict's outputs in a store: False until every chunk is written (a killed run leaves it False)."""
