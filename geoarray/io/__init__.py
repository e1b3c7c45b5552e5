"""Readers and writers: GeoTIFF (rioxarray/rasterio) and STAC (odc-stac, stackstac)."""
