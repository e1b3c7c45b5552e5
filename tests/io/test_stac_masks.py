"""from_stac honours the GDAL masks of asset COGs (an internal mask written with ``write_mask``, or an alpha band):
the masked pixels get the fill value and, in an integer cube, ``valid=False``; on the items' grid (read window by
window), reprojected to the neighbouring UTM zone, and where items are mosaicked; and a nodata-only catalog reads
no mask at all. Real COGs written with rasterio, real pystac items (HUNT-2026-11-30-load.md, row 64).
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

import geoarray

H, W, RES = 40, 50, 20.0
X0, Y0 = 760_000.0, 4_000_000.0  # near the 33/34 UTM zone boundary (18°E)
TR = from_origin(X0, Y0, RES, RES)
BANDS = ["red", "green", "nir"]
WHEN = dt.datetime(2022, 4, 1, 10, 30, tzinfo=dt.UTC)


def _pixels(seed: int, n: int = 3, shape=(H, W)) -> np.ndarray:
    """uint16 values 1..9999: never the fill value 0, so every 0 in a cube is fill."""
    return np.random.default_rng(seed).integers(1, 10_000, size=(n, *shape)).astype(np.uint16)


def _mask(shape=(H, W)) -> np.ndarray:
    """True = masked: a disc and a bar that cross the 16-px chunk edges (not a chunk-aligned box)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - 14) ** 2 + (xx - 18) ** 2 <= 49) | ((yy >= 30) & (yy < 34) & (xx >= 5))


def _cog(path, data, *, mask=None, nodata=None, crs="EPSG:32633", transform=TR):
    prof = dict(driver="COG", height=data.shape[-2], width=data.shape[-1], count=1, dtype=data.dtype.name,
                crs=crs, transform=transform, nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data[None])
        if mask is not None:
            dst.write_mask(np.where(mask, 0, 255).astype(np.uint8))  # an internal mask (COG: GDAL's default)
    return str(path)


def _item(iid, hrefs, *, crs="EPSG:32633", transform=TR, shape=(H, W), data_type="uint16", when=WHEN):
    ny, nx = shape
    t = transform
    b = transform_bounds(crs, "EPSG:4326", t.c, t.f + ny * t.e, t.c + nx * t.a, t.f)
    item = pystac.Item(
        id=iid,
        geometry={"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]]},
        bbox=list(b),
        datetime=when,
        properties={"proj:code": crs, "proj:shape": [ny, nx], "proj:transform": list(t)[:6]},
        stac_extensions=[
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
    )  # fmt: skip
    for name, href in hrefs.items():
        extra = {"raster:bands": [{"data_type": data_type}] * (4 if name == "visual" else 1)} if data_type else {}
        item.add_asset(name, pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra))
    return item


def _red_masked(root, *, nodata=None, seed=0, shape=(H, W), **kw):
    """An item whose red COG has an internal mask (and ``nodata`` tag), green and nir none."""
    data = _pixels(seed, shape=shape)
    crs, tr = kw.get("crs", "EPSG:32633"), kw.get("transform", TR)
    hrefs = {
        b: _cog(root / f"{b}{seed}.tif", data[k], mask=_mask(data.shape[1:]) if b == "red" else None,
                nodata=nodata if b == "red" else None, crs=crs, transform=tr)
        for k, b in enumerate(BANDS)
    }  # fmt: skip
    return data, hrefs


@pytest.mark.parametrize("engine", ["odc", "stackstac"])
@pytest.mark.parametrize("nodata", [None, 0], ids=["no-tag", "tag-0"])
def test_masked_pixels_are_invalid_on_the_items_grid(tmp_path, engine, nodata):
    """Before: odc-stac read the masked pixels as data (valid, raw values); stackstac filled them but the cube
    kept them valid (green and nir were not fill). Read in 16-px windows and in one; integer and float cubes.
    With a nodata tag beside the mask (GDAL lets the explicit mask win), the mask still counts."""
    data, hrefs = _red_masked(tmp_path, nodata=nodata)
    item = _item("s", hrefs)
    m = _mask()
    for chunk in (16, 512):
        ds = geoarray.from_stac([item], bands=BANDS, engine=engine, chunk=chunk)
        np.testing.assert_array_equal(~ds.valid.values[0], m)  # exactly the mask written
        im = ds.imagery.values[0]
        np.testing.assert_array_equal(im[0], np.where(m, 0, data[0]))  # fill (0) under the mask, data elsewhere
        np.testing.assert_array_equal(im[1:], data[1:])
        f = geoarray.from_stac([item], bands=BANDS, engine=engine, chunk=chunk, dtype="float32")
        np.testing.assert_array_equal(np.isnan(f.imagery.values[0]).any(0), m)  # NaN: predict skips them


def _reference_invalid(ds, href):
    """rasterio's own reprojection (nearest) of the file's mask onto the cube's grid: True where masked or
    outside the file."""
    out = np.zeros((ds.sizes["y"], ds.sizes["x"]), np.uint8)
    with rasterio.open(href) as src, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        reproject(src.read_masks(1), out, src_transform=src.transform, src_crs=src.crs, dst_nodata=0,
                  dst_transform=ds.rio.transform(), dst_crs=ds.rio.crs, resampling=Resampling.nearest)  # fmt: skip
    return out == 0


def _off_edges(got, want):
    """Pixels where ``got`` and ``want`` differ, away from the edges of ``want`` (no 3x3 neighbour differs)."""
    p = np.pad(want, 1, mode="edge")
    same_around = np.ones_like(want)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same_around &= p[1 + dy : 1 + dy + want.shape[0], 1 + dx : 1 + dx + want.shape[1]] == want
    return int(((got != want) & same_around).sum()), int((got != want).sum())


@pytest.mark.parametrize("engine", ["odc", "stackstac"])
@pytest.mark.parametrize("nodata", [None, 0], ids=["no-tag", "tag-0"])
def test_masked_pixels_reprojected_to_another_utm_zone(tmp_path, engine, nodata):
    """An item in EPSG:32634 loaded onto EPSG:32633 at 20 m. Before: the mask made red fill, but the pixels
    stayed valid (green and nir were data). Tolerance: the cube's invalid pixels equal rasterio's own
    reprojection of the mask except within one pixel of that mask's edges (none differ here, see the count)."""
    bounds = (X0, Y0 - H * RES, X0 + W * RES, Y0)
    tr34, w, h = calculate_default_transform("EPSG:32633", "EPSG:32634", W, H, *bounds, resolution=RES)
    data, hrefs = _red_masked(tmp_path, nodata=nodata, crs="EPSG:32634", transform=tr34, shape=(h, w))
    item = _item("z34", hrefs, crs="EPSG:32634", transform=tr34, shape=(h, w))
    for chunk in (16, 512):
        ds = geoarray.from_stac([item], bands=BANDS, engine=engine, crs="EPSG:32633", resolution=RES, chunk=chunk)
        want = _reference_invalid(ds, hrefs["red"])
        inside = _mask(data.shape[1:]).sum()
        assert want.sum() > inside  # the mask and the corners outside the rotated footprint
        off_edge, differ = _off_edges(~ds.valid.values[0], want)
        assert off_edge == 0 and differ == 0, (off_edge, differ)


@pytest.mark.parametrize("engine", ["odc", "stackstac"])
def test_a_masked_item_lets_the_next_one_show_through(tmp_path, engine):
    """Two items at one timestamp are mosaicked (the smaller id on top). Before (odc): item 'a''s masked
    pixels were data, so they hid item 'b'. stackstac already masked them."""
    da, db = _pixels(1), _pixels(2)
    m = _mask()
    a = _item("a", {b: _cog(tmp_path / f"a_{b}.tif", da[k], mask=m) for k, b in enumerate(BANDS)})
    b = _item("b", {b: _cog(tmp_path / f"b_{b}.tif", db[k]) for k, b in enumerate(BANDS)})
    ds = geoarray.from_stac([b, a], bands=BANDS, engine=engine, chunk=16)
    assert ds.sizes["time"] == 1 and bool(ds.valid.all())
    np.testing.assert_array_equal(ds.imagery.values[0], np.where(m, db, da))


@pytest.mark.parametrize("nodata", [None, 0], ids=["no-tag", "tag-0"])
def test_an_alpha_band_masks_a_multi_band_asset(tmp_path, nodata):
    """An RGBA COG as one asset (odc only: stackstac reads no multi-band assets). Before: the transparent
    pixels were data. With a nodata tag GDAL's masks follow the tag and ignore the alpha band, so the alpha
    band itself is read; reprojected, GDAL's warper ignores it too, so it is warped beside the band."""
    rgba = np.concatenate([_pixels(3, 3).astype(np.uint8) | 1, np.full((1, H, W), 255, np.uint8)])
    m = _mask()
    rgba[3][m] = 0
    path = tmp_path / "rgba.tif"
    prof = dict(driver="GTiff", height=H, width=W, count=4, dtype="uint8", crs="EPSG:32633", transform=TR,
                photometric="RGB", alpha="YES", tiled=True, blockxsize=16, blockysize=16, nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(rgba)
    item = _item("rgba", {"visual": str(path)}, data_type="uint8")
    names = ["visual.1", "visual.2", "visual.3"]
    ds = geoarray.from_stac([item], bands=names, chunk=16)
    np.testing.assert_array_equal(~ds.valid.values[0], m)
    np.testing.assert_array_equal(ds.imagery.values[0], np.where(m, 0, rgba[:3]))
    moved = geoarray.from_stac([item], bands=names, crs="EPSG:32634", resolution=RES, chunk=16)
    with rasterio.open(path) as src:  # the reference: the alpha band reprojected by rasterio (nearest)
        ref = np.zeros((moved.sizes["y"], moved.sizes["x"]), np.uint8)
        reproject(src.read(4), ref, src_transform=src.transform, src_crs=src.crs, dst_nodata=0,
                  dst_transform=moved.rio.transform(), dst_crs=moved.rio.crs, resampling=Resampling.nearest)  # fmt: skip
    assert _off_edges(~moved.valid.values[0], ref == 0) == (0, 0)


def _count_mask_reads(monkeypatch):
    """Calls of rasterio's read_masks (counted, then passed on to the real method)."""
    calls = []
    real = rasterio.io.DatasetReader.read_masks

    def counted(self, *a, **kw):
        calls.append(self.name)
        return real(self, *a, **kw)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks", counted)
    return calls


def test_a_nodata_catalog_reads_no_mask_and_opens_each_window_once(tmp_path, monkeypatch):
    """The common case (nodata-tagged COGs, like Sentinel-2): no mask is read, and the files are opened as
    often as odc-stac's own reader opens them (the header says there is no mask: nothing more is read). A
    masked catalog, by contrast, reads its masks (this half fails on the old reader)."""
    import odc.stac

    data = _pixels(4)
    hrefs = {b: _cog(tmp_path / f"n_{b}.tif", data[k], nodata=0) for k, b in enumerate(BANDS)}
    item = _item("n", hrefs)
    cube = geoarray.from_stac([item], bands=BANDS, chunk=16)
    plain = odc.stac.load([item], bands=BANDS, chunks={"x": 16, "y": 16})  # odc-stac's own reader
    calls = _count_mask_reads(monkeypatch)
    opens = []
    real_open = rasterio.open

    def counted_open(*a, **kw):
        opens.append(a[0])
        return real_open(*a, **kw)

    monkeypatch.setattr(rasterio, "open", counted_open)
    got = cube.imagery.values
    ours = len(opens)
    opens.clear()
    theirs = plain.to_dataarray("band").values
    assert calls == [] and ours == len(opens) == 3 * 3 * 4  # 3 bands x 3 x 4 windows of 16 px
    np.testing.assert_array_equal(got[0], theirs[:, 0])
    _, masked = _red_masked(tmp_path, seed=5)
    geoarray.from_stac([_item("m", masked)], bands=BANDS, chunk=16).imagery.compute()
    assert len(calls) == 3 * 4  # once per window of the red file, which has a mask; none for green and nir


@pytest.mark.parametrize("data_type", ["uint16", None], ids=["uint16-cube", "float32-cube"])
def test_stac_features_leaves_masked_pixels_as_nodata(tmp_path, data_type):
    """stac_features over a catalog of masked COGs without nodata (one date in EPSG:32633, one in EPSG:32634
    loaded onto it). Before: the model ran on the masked pixels and wrote classes there. Now the mask output
    holds its nodata and the probabilities NaN exactly where rasterio's reprojection of the mask is 0."""
    from stac_items import make_ckpt

    bounds = (X0, Y0 - H * RES, X0 + W * RES, Y0)
    tr34, w, h = calculate_default_transform("EPSG:32633", "EPSG:32634", W, H, *bounds, resolution=RES)
    items, reds = [], []
    for t, (crs, tr, shape) in enumerate((("EPSG:32633", TR, (H, W)), ("EPSG:32634", tr34, (h, w)))):
        data, m = _pixels(10 + t, shape=shape), _mask(shape)
        hrefs = {b: _cog(tmp_path / f"t{t}_{b}.tif", data[k], mask=m, crs=crs, transform=tr) for k, b in enumerate(BANDS)}
        reds.append(hrefs["red"])
        items.append(_item(f"t{t}", hrefs, crs=crs, transform=tr, shape=shape, data_type=data_type,
                           when=dt.datetime(2022, 4 + t, 1, 10, 30, tzinfo=dt.UTC)))  # fmt: skip
    ckpt = make_ckpt(tmp_path / "m.safetensors")
    out = geoarray.stac_features(items, ckpt, tmp_path / "f.zarr", crs="EPSG:32633", resolution=RES, chunk=32,
                                 progress=False)  # fmt: skip
    nodata = out["mask"].attrs["nodata"]
    for t, red in enumerate(reds):
        want = _reference_invalid(out, red)
        assert want.sum() > _mask().sum() * 0.9
        np.testing.assert_array_equal(out["mask"].values[t] == nodata, want)
        np.testing.assert_array_equal(np.isnan(out["probabilities"].values[t]).any(0), want)


def test_real_zeros_beside_a_mask_float_keeps_them_integer_marks_them(tmp_path):
    """A masked file without nodata is filled with 0: in an integer cube a real 0 in that band cannot be told
    from the fill, so it is invalid (documented); a float cube's NaN marks exactly the masked pixels."""
    data, hrefs = _red_masked(tmp_path)
    zeros = np.zeros((H, W), bool)
    zeros[5:8, 40:45] = True  # real zeros, away from the mask
    red = np.where(zeros, 0, data[0]).astype(np.uint16)
    hrefs["red"] = _cog(tmp_path / "red_zeros.tif", red, mask=_mask())
    item = _item("z", hrefs)
    f = geoarray.from_stac([item], bands=BANDS, chunk=16, dtype="float32").imagery.values[0]
    np.testing.assert_array_equal(np.isnan(f).any(0), _mask())
    np.testing.assert_array_equal(f[0][zeros], 0)
    ds = geoarray.from_stac([item], bands=BANDS, chunk=16)
    np.testing.assert_array_equal(~ds.valid.values[0], _mask() | zeros)


def test_check_all_finds_a_mask_in_a_later_item(tmp_path):
    """The valid rule for masked bands follows the files probed: with check='all' a mask in the second item's
    red file counts though the first item's has none (with 'first' the masked pixels are still fill)."""
    plain = _pixels(6)
    first = _item("a", {b: _cog(tmp_path / f"a_{b}.tif", plain[k]) for k, b in enumerate(BANDS)})
    data, hrefs = _red_masked(tmp_path, seed=7)
    second = _item("b", hrefs, when=dt.datetime(2022, 5, 1, 10, 30, tzinfo=dt.UTC))
    ds = geoarray.from_stac([first, second], bands=BANDS, chunk=16, check="all")
    assert bool(ds.valid[0].all())
    np.testing.assert_array_equal(~ds.valid.values[1], _mask())
    once = geoarray.from_stac([first, second], bands=BANDS, chunk=16)  # check="first": red of "a" only
    np.testing.assert_array_equal(once.imagery.values[1, 0], np.where(_mask(), 0, data[0]))
