"""odc-stac's rasterio reader driver, except that a read error names the file.

odc-stac re-raises GDAL's bare message ("CURL error: ..."), which does not say which of many files failed.
Imported only when odc-stac loads (it imports odc.loader). Module-level classes so the dask graph pickles.
"""

from __future__ import annotations

import warnings
from typing import Any

import rasterio.errors
from odc.loader import RioDriver, RioReader
from odc.stac._mdtools import StacAuxReader, StacMDParser

from geoarray.errors import STACError

__all__ = ["naming_driver"]

# odc-stac reprojects a window it has read with rasterio.warp.reproject on in-memory arrays whose transforms it
# passes itself; GDAL's in-memory source then reports "Dataset has no geotransform", which is not true of the
# user's data and alarms users of every reprojected load (e.g. items in two UTM zones). Silenced only there.
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning, module=r"rasterio\.warp")


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
    def __init__(self, *args: Any, aws: dict[str, Any] | None = None, gdal: dict[str, str] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self._aws, self._gdal = aws, dict(gdal or {})

    def open(self, src: Any, ctx: Any) -> NamingRioReader:
        return NamingRioReader(src, ctx)

    def capture_env(self) -> dict[str, Any]:
        # The env is captured once, into the read tasks (also on dask workers): the credentials and endpoint
        # of storage_options travel with them as an AWSSession, without configuring any process globally.
        env = super().capture_env()
        if self._aws is not None:
            env = {**env, **self._gdal, "_aws": self._aws}
        return env


def naming_driver(aws: dict[str, Any] | None = None, gdal: dict[str, str] | None = None) -> NamingRioDriver:
    return NamingRioDriver(md_parser=StacMDParser({}), aux_reader=StacAuxReader(), aws=aws, gdal=gdal)
