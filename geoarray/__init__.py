"""geoarray: deep learning on satellite image cubes.

The public API is flat; heavy modules (torch) load only when a function that needs them is called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from geoarray import errors
from geoarray.checkpoint import load_checkpoint, save_checkpoint
from geoarray.cube import open_cube, validate_cube, write_cube
from geoarray.errors import GeoArrayError
from geoarray.io.geotiff import export_geotiff, from_geotiff, read_labels
from geoarray.io.stac import from_stac
from geoarray.predict import predict
from geoarray.train import fit

__all__ = [
    # errors and submodules
    "GeoArrayError",
    "__version__",
    "datasets",
    "errors",
    # I/O
    "export_geotiff",
    "fit",
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

# Submodules that import torch (models) or are rarely needed load on first attribute access.
_LAZY_MODULES = {"datasets", "models", "metrics", "plot", "io"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"geoarray.{name}")
    raise AttributeError(f"module 'geoarray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
