"""geoarray: deep learning on satellite image cubes.

The public API is flat; heavy modules (torch) load only when a function that needs them is called.
"""

from __future__ import annotations

from typing import Any

from geoarray import errors
from geoarray._chip_predict import predict_chips
from geoarray._version import __version__
from geoarray.checkpoint import load_checkpoint, save_checkpoint
from geoarray.chips import plan_chips
from geoarray.cube import open_cube, validate_cube, write_cube
from geoarray.errors import GeoArrayError
from geoarray.io.geotiff import export_geotiff, from_geotiff, read_labels
from geoarray.io.stac import from_stac
from geoarray.predict import clear_caches, predict
from geoarray.probe import probe
from geoarray.stac_features import stac_features
from geoarray.training import fit

__all__ = [  # noqa: RUF022  (grouped by stage, like xarray)
    # errors
    "GeoArrayError",
    "__version__",
    "errors",
    # the cube
    "open_cube",
    "validate_cube",
    "write_cube",
    # loading
    "export_geotiff",
    "from_geotiff",
    "from_stac",
    "read_labels",
    # training
    "fit",
    "plan_chips",
    # checkpoints and inference
    "clear_caches",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    # evaluation
    "probe",
    # chip-level inference
    "predict_chips",
    # STAC to features
    "stac_features",
    # submodules (loaded on first use)
    "datasets",
    "demo",
    "distributed",
    "metrics",
    "models",
    "plot",
]

# Submodules that import torch (models) or are rarely needed load on first attribute access.
_LAZY_MODULES = {"datasets", "demo", "distributed", "io", "metrics", "models", "plot"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"geoarray.{name}")
    raise AttributeError(f"module 'geoarray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _LAZY_MODULES)
