"""Real STAC items (tests/data/stac, from odc-stac's test data) pointed at small local COGs written here."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from conftest import write_tif

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
