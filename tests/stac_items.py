"""Real STAC items (tests/data/stac, from odc-stac's test data) pointed at small local COGs written here."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from affine import Affine
from conftest import write_tif
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

DATA = Path(__file__).parent / "data" / "stac"
LANDSAT = "LC08_L2SP_028030_20200114_20200824_02_T1_SR.json"  # proj:epsg on the item, no raster:bands
USGS = "LC08_L2SR_081119_20200101_20200823_02_T2.json"  # "eo:bands": [3] (indices) on the assets
S2 = "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"  # asset-level proj, 3-band "visual"
COLLECTION = "sentinel-2-l2a.collection.json"
LIDAR = "lidar_dem.json"  # datetime null, start/end_datetime
OFFLINE = "http://127.0.0.1:9"  # the discard port on this machine: closed, so a connection fails at once


def raw(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def _epsg(holder: dict[str, Any]) -> int | None:
    if holder.get("proj:epsg") is not None:
        return int(holder["proj:epsg"])
    if holder.get("proj:code"):
        return int(str(holder["proj:code"]).split(":")[1])
    return None


def localize(
    name: str,
    root: Path,
    assets: list[str],
    *,
    shape: tuple[int, int] | None = (40, 50),
    proj_code: bool = False,
    raster_bands: bool = False,
    seed: int = 0,
    item_id: str | None = None,
    datetime: str | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A real item's dict whose ``assets`` point at COGs written from its own proj:* (shape shrunk).

    Returns the dict and the pixels written per asset key. Pixels are uint16, nodata 0, and the first row
    starts with five nodata pixels so nodata handling is compared too.
    """
    d = copy.deepcopy(raw(name))
    for link in d.get("links", []):  # keep them remote, but never let anything leave this machine
        link["href"] = re.sub(r"^\w+://[^/]+", OFFLINE, link["href"])
    if item_id:
        d["id"] = item_id
    if datetime:
        d["properties"]["datetime"] = datetime
    props = d["properties"]
    if shape is not None:
        for holder in [props, *d["assets"].values()]:
            if "proj:shape" in holder:
                holder["proj:shape"] = list(shape)
            if "proj:bbox" in holder:  # keep it true to the shrunk grid
                tr = Affine(*(holder.get("proj:transform") or props["proj:transform"])[:6])
                (x0, y0), (x1, y1) = tr * (0, 0), tr * (shape[1], shape[0])
                holder["proj:bbox"] = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    rng = np.random.default_rng(seed)
    truth = {}
    root.mkdir(parents=True, exist_ok=True)
    for key in assets:
        a = d["assets"][key]
        epsg = _epsg(a) or _epsg(props)
        tr = Affine(*(a.get("proj:transform") or props["proj:transform"])[:6])
        ny, nx = a.get("proj:shape") or props["proj:shape"]
        n = (counts or {}).get(key, 1)
        data = rng.integers(1, 10_000, size=(n, ny, nx), dtype=np.uint16)
        data[:, 0, :5] = 0
        path = write_tif(
            root / f"{d['id']}_{key}.tif", data, crs=f"EPSG:{epsg}", transform=tr, nodata=0, cog=True
        )
        a["href"] = str(path)
        truth[key] = data[0] if n == 1 else data
        if raster_bands:
            a["raster:bands"] = [{"data_type": "uint16", "nodata": 0}] * n
    if raster_bands:
        d["stac_extensions"] = [
            *d.get("stac_extensions", []),
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ]
    if proj_code:
        for holder in [props, *d["assets"].values()]:
            if "proj:epsg" in holder:
                holder["proj:code"] = f"EPSG:{holder.pop('proj:epsg')}"
        d["stac_extensions"] = [e for e in d.get("stac_extensions", []) if "projection" not in e] + [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
        ]
    return d, truth


# -- a catalog over two UTM zones, and a checkpoint for it (stac_features) -------------------------------------

BANDS = ["red", "green", "nir"]
CLASSES = ["bare", "water"]
X0, Y0, RES = 760_000.0, 4_000_000.0, 20.0  # near the 33/34 UTM zone boundary (18°E)


def make_catalog(root: Path, size: int = 96, seed: int = 0) -> Path:
    """An ItemCollection JSON of 3 dates (2 in EPSG:32633, 1 in EPSG:32634) over the same ground."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tr33 = from_origin(X0, Y0, RES, RES)
    bounds = (X0, Y0 - size * RES, X0 + size * RES, Y0)
    items = []
    for t, zone in enumerate((32633, 32633, 32634)):
        crs = f"EPSG:{zone}"
        world = rng.integers(1, 10_000, size=(len(BANDS), size, size)).astype(np.uint16)
        world[:, :3, :3] = 0  # nodata in a corner
        if zone == 32633:
            data, tr = world, tr33
        else:
            tr, w, h = calculate_default_transform("EPSG:32633", crs, size, size, *bounds, resolution=RES)
            data = np.zeros((len(BANDS), h, w), np.uint16)
            with warnings.catch_warnings():  # rasterio: arrays carry no georeferencing (given here)
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                reproject(world, data, src_transform=tr33, src_crs="EPSG:32633", dst_transform=tr, dst_crs=crs,
                          resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)  # fmt: skip
        ny, nx = data.shape[1:]
        b = transform_bounds(crs, "EPSG:4326", tr.c, tr.f + ny * tr.e, tr.c + nx * tr.a, tr.f)
        item = pystac.Item(
            id=f"scene-{t}",
            geometry={"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]]},
            bbox=list(b),
            datetime=dt.datetime(2022, 4 + t, 1, 10, 30, tzinfo=dt.UTC),
            properties={"proj:code": crs, "proj:shape": [ny, nx], "proj:transform": list(tr)[:6]},
            stac_extensions=[
                "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
        )  # fmt: skip
        for k, band in enumerate(BANDS):
            path = write_tif(root / f"scene-{t}_{band}.tif", data[k], crs=crs, transform=tr, nodata=0, cog=True)
            item.add_asset(
                band,
                pystac.Asset(
                    href=str(path),
                    media_type=pystac.MediaType.COG,
                    roles=["data"],
                    extra_fields={"raster:bands": [{"data_type": "uint16", "nodata": 0}]},
                ),
            )
        items.append(item)
    path = root / "search.json"
    pystac.ItemCollection(items).save_object(str(path))
    return path


def make_ckpt(path: Path, bands=BANDS, seed: int = 0) -> Path:
    import torch

    from geoarray.models import create_model

    torch.manual_seed(seed)
    model = create_model("unet", in_channels=len(bands), num_classes=len(CLASSES), depth=2, width=4)
    from geoarray.checkpoint import save_checkpoint

    return save_checkpoint(
        path, model, task="segmentation", bands=list(bands), mean=[5000.0] * 3, std=[2900.0] * 3, classes=CLASSES
    )
