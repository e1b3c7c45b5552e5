"""The geoarray exception family.

Every error a user can cause derives from :class:`GeoArrayError` and from the builtin exception that fits it
(``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working. Messages say what was
found, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BandError",
    "CRSError",
    "CheckpointError",
    "ClusterError",
    "CubeError",
    "DimensionError",
    "GeoArrayError",
    "GeoArrayWarning",
    "MetricsError",
    "ModelError",
    "NoOverlapError",
    "OutputPathError",
    "PlotError",
    "PredictError",
    "ProbeError",
    "RasterError",
    "STACError",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "TimeError",
    "TrainError",
]


class GeoArrayError(Exception):
    """Base class of every error geoarray raises on bad input."""


class GeoArrayWarning(UserWarning):
    """Something worked, but probably not the way you meant."""


# -- the cube ---------------------------------------------------------------------------------------------
class CubeError(GeoArrayError, ValueError):
    """A Dataset does not satisfy the cube contract."""


class DimensionError(CubeError):
    """Wrong, missing or misordered dimensions."""


class BandError(CubeError):
    """Missing, duplicate or unnamed bands."""


class TimeError(CubeError):
    """A missing, non-datetime or non-monotonic time axis."""


class CRSError(CubeError):
    """A missing CRS, or grids in different CRSs that cannot be combined."""


# -- storage ----------------------------------------------------------------------------------------------
class StoreError(GeoArrayError, OSError):
    """A Zarr store that cannot be opened, is not a cube, or cannot be written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store path does not exist."""


class StoreExistsError(StoreError, FileExistsError):
    """The store (or a variable in it) exists and the mode forbids overwriting it."""


class OutputPathError(GeoArrayError, OSError):
    """An output file path that cannot be written: a directory, a path under a file, or the wrong suffix."""


# -- inputs -----------------------------------------------------------------------------------------------
class RasterError(GeoArrayError, ValueError):
    """GeoTIFF inputs that cannot be read or combined."""


class NoOverlapError(RasterError):
    """A raster that does not overlap the cube grid at all."""


class STACError(GeoArrayError, ValueError):
    """STAC items that cannot be loaded as a cube."""


# -- models -----------------------------------------------------------------------------------------------
class ModelError(GeoArrayError, ValueError):
    """An unknown model name or bad hyper-parameters."""


class CheckpointError(GeoArrayError, ValueError):
    """A file that is not a (valid) geoarray checkpoint."""


class PredictError(GeoArrayError, ValueError):
    """A cube/checkpoint combination that predict cannot run."""


class TrainError(GeoArrayError, ValueError):
    """Training inputs or a training run that cannot go on."""


class ProbeError(GeoArrayError, ValueError):
    """An evaluation (probe) that cannot run on these inputs."""


class PlotError(GeoArrayError, ValueError):
    """A plot's input is not what it draws (e.g. a folder without the arrays a fit writes)."""


class MetricsError(GeoArrayError, ValueError):
    """Scores asked of inputs that cannot give them (non-integer class ids, names that do not fit a matrix)."""


class ClusterError(GeoArrayError, OSError):
    """A Dask scheduler that cannot be reached (a wrong address, nothing listening, a host that is not there)."""
