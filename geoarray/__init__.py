"""geoarray: deep learning on satellite image cubes.

The public API is flat; heavy modules (torch) load only when a function that needs them is called.
"""

from __future__ import annotations

from typing import Any

from geoarray import errors
from geoarray.cube import open_cube, validate_cube, write_cube
from geoarray.errors import GeoArrayError

__version__ = "0.1.0"

__all__ = [
    # errors and submodules
    "GeoArrayError",
    "__version__",
    "datasets",
    "errors",
    # I/O
    "export_geotiff",
    "from_geotiff",
    "from_stac",
    # models and inference
    "load_checkpoint",
    # cube
    "open_cube",
    "predict",
    "read_labels",
    "save_checkpoint",
    "validate_cube",
    "write_cube",
]

# Lazy attributes: keep `import geoarray` light (no torch, no rasterio warp machinery until used).
_LAZY = {
    "from_geotiff": "geoarray.io.geotiff",
    "read_labels": "geoarray.io.geotiff",
    "export_geotiff": "geoarray.io.geotiff",
    "from_stac": "geoarray.io.stac",
    "predict": "geoarray.predict",
    "save_checkpoint": "geoarray.checkpoint",
    "load_checkpoint": "geoarray.checkpoint",
}
_LAZY_MODULES = {"datasets", "models", "metrics", "plot", "io"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"geoarray.{name}")
    raise AttributeError(f"module 'geoarray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
