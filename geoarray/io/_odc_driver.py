"""odc-stac's rasterio reader driver, except that a read error names the file and GDAL masks are honoured.

- odc-stac re-raises GDAL's bare message ("CURL error: ..."), which does not say which of many files failed.
- Where odc-loader pastes a window of the file onto the output grid unchanged (the items' own grid), it reads
  the pixels only, so a COG's GDAL per-dataset mask (an internal or ``.msk`` mask, or an alpha band) was lost
  and the masked pixels came out as data. :func:`_read` is odc-loader's own read (``odc.loader._rio._rio_read``,
  one open per file and window) that also writes the fill value into the masked pixels there. Where odc
  reprojects one band (``rasterio.warp.reproject``), GDAL's warper honours an internal/.msk mask but not an
  alpha band, so the alpha band is warped onto the same window beside it. Masks are read only when the open
  file's header says it has one: a plain nodata file (Sentinel-2, Landsat) costs nothing more.

Imported only when odc-stac loads (it imports odc.loader). Module-level classes so the dask graph pickles.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from odc.geo.roi import roi_is_empty, w_
from odc.loader import RioDriver, RioReader

# odc-loader's private read steps (0.6.x): another layout fails this import, and from_stac then falls back to
# odc-stac's own driver (see io/stac.py _naming_driver)
from odc.loader._reader import pick_overview, resolve_band_query, resolve_dst_nodata, resolve_src_nodata
from odc.loader._rio import _do_read, _reproject_info_from_rio, rio_env
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
            if _plain_band(self._src, kw):
                return _read(self._src, cfg, dst_geobox, dst=kw.get("dst"))
            return super().read(cfg, dst_geobox, **kw)
        except rasterio.errors.RasterioError as e:
            raise STACError(
                f"reading {self._src.uri!r} (band {self._src.band}) failed: {type(e).__name__}: {e}. "
                "Check the network and credentials, or whether the file was moved or changed."
            ) from e


def _plain_band(src: Any, kw: dict[str, Any]) -> bool:
    """One 2-D band (every band geoarray loads): read by :func:`_read`; anything else by odc-loader itself."""
    dst = kw.get("dst")
    meta = src.meta
    return (
        kw.get("selection") is None
        and src.band > 0
        and (meta is None or not meta.extra_dims)
        and (dst is None or dst.ndim == 2)
    )


def _read(src: Any, cfg: Any, dst_geobox: Any, dst: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """``odc.loader._rio._rio_read`` for one 2-D band, plus the file's GDAL mask where the window is pasted."""
    ttol = 0.9 if cfg.nearest else 0.05  # as odc-loader: nearest ignores sub-pixel shifts when pasting
    with rasterio.open(src.uri, "r", sharing=False) as rdr:
        resolve_band_query(src, rdr.count)  # odc-loader's check that the band exists
        bidx = int(src.band)  # a 2-D band (see _plain_band): odc-loader's query gives this same int
        rr = _reproject_info_from_rio(rdr, dst_geobox, ttol=ttol)
        ovr = None
        if cfg.use_overviews and rr.read_shrink > 1:
            ovr = pick_overview(rr.read_shrink, rdr.overviews(bidx))
        if ovr is None:
            with rio_env(VSI_CACHE=False):
                roi, pix = _do_read(rasterio.band(rdr, bidx), cfg, dst_geobox, rr, dst=dst)
                if pix.size and not roi_is_empty(rr.roi_src):
                    if rr.paste_ok and rr.read_shrink == 1:
                        _mask_pasted(rdr, bidx, rr, pix, cfg)
                    else:
                        _mask_warped(rdr, bidx, rr, pix, cfg, dst_geobox)
                return roi, pix
        # an overview is always reprojected (read_shrink > 1)
        with rasterio.open(src.uri, "r", sharing=False, overview_level=ovr) as rdr_ovr:
            rr = _reproject_info_from_rio(rdr, dst_geobox, ttol=ttol)
            with rio_env(VSI_CACHE=False):
                roi, pix = _do_read(rasterio.band(rdr_ovr, bidx), cfg, dst_geobox, rr, dst=dst)
                if pix.size and not roi_is_empty(rr.roi_src):
                    _mask_warped(rdr_ovr, bidx, rr, pix, cfg, dst_geobox)
                return roi, pix


def _alpha(rdr: Any, bidx: int) -> int | None:
    """The file's alpha band (1-based), unless it is the band being read; from the header only."""
    from rasterio.enums import ColorInterp

    ks = [k + 1 for k, ci in enumerate(rdr.colorinterp) if ci == ColorInterp.alpha and k + 1 != bidx]
    return ks[0] if ks else None


def _fill(rdr: Any, bidx: int, pix: np.ndarray, cfg: Any) -> Any:
    """The value odc-loader fills missing pixels of this read with."""
    fill = resolve_dst_nodata(pix.dtype, cfg, resolve_src_nodata(rdr.nodatavals[bidx - 1], cfg))
    return 0 if fill is None else fill


def _mask_warped(rdr: Any, bidx: int, rr: Any, pix: np.ndarray, cfg: Any, dst_geobox: Any) -> None:
    """Fill where the file's alpha band, warped (nearest) onto the reprojected window, is 0."""
    import rasterio.warp
    from rasterio.enums import Resampling

    alpha = _alpha(rdr, bidx)
    if alpha is None:
        return
    a = np.zeros(pix.shape, dtype=rdr.dtypes[alpha - 1])
    rasterio.warp.reproject(
        rasterio.band(rdr, alpha),
        a,
        dst_crs=str(dst_geobox.crs),
        dst_transform=dst_geobox[rr.roi_dst].transform,
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    pix[a == 0] = _fill(rdr, bidx, pix, cfg)


def _mask_pasted(rdr: Any, bidx: int, rr: Any, pix: np.ndarray, cfg: Any) -> None:
    """Write the fill value into the pixels of a pasted window that the file's GDAL mask marks as fill.

    Only the header is looked at (already read) unless the band has a per-dataset mask or the file an alpha
    band. GDAL's own mask follows a nodata tag instead of an alpha band when the file has both, so then the
    alpha band itself is read (as :func:`geoarray.from_geotiff` does); a nodata tag beside an explicit mask
    is odc-loader's (it already wrote the fill there), and the explicit mask is read.
    """
    from rasterio.enums import MaskFlags

    explicit = MaskFlags.per_dataset in rdr.mask_flag_enums[bidx - 1]
    alpha = None if explicit else _alpha(rdr, bidx)
    if not explicit and alpha is None:
        return
    win = w_[rr.roi_src]
    if explicit:
        masked = rdr.read_masks(bidx, window=win, out_shape=pix.shape) == 0
    else:
        masked = rdr.read(alpha, window=win, out_shape=pix.shape) == 0
    pix[masked] = _fill(rdr, bidx, pix, cfg)


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
