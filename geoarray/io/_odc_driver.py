"""odc-stac's rasterio reader driver, except that a read error names the file.

odc-stac re-raises GDAL's bare message ("CURL error: ..."), which does not say which of many files failed.
Imported only when odc-stac loads (it imports odc.loader). Module-level classes so the dask graph pickles.
"""

from __future__ import annotations

from typing import Any

import rasterio.errors
from odc.loader import RioDriver, RioReader
from odc.stac._mdtools import StacAuxReader, StacMDParser

from geoarray.errors import STACError

__all__ = ["naming_driver"]


class NamingRioReader(RioReader):
    def read(self, cfg: Any, dst_geobox: Any, **kw: Any) -> Any:
        try:
            return super().read(cfg, dst_geobox, **kw)
        except rasterio.errors.RasterioError as e:
            raise STACError(
                f"reading {self._src.uri!r} (band {self._src.band}) failed: {type(e).__name__}: {e}. "
                "Check the network and credentials, or whether the file was moved or changed."
            ) from e


class NamingRioDriver(RioDriver):
    def open(self, src: Any, ctx: Any) -> NamingRioReader:
        return NamingRioReader(src, ctx)


def naming_driver() -> NamingRioDriver:
    return NamingRioDriver(md_parser=StacMDParser({}), aux_reader=StacAuxReader())
