"""The ``geoarray`` command line: ``geoarray --help`` lists the commands; each has ``--help``.

The app lives in :mod:`._app`; importing the command modules registers their commands on it.
"""

from __future__ import annotations

from geoarray.cli import _ingest, _model, _outputs, _stac  # noqa: F401  (register the commands)
from geoarray.cli._app import app

__all__ = ["app"]
