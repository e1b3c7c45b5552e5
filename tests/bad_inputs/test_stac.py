"""Bad STAC inputs: each gets a clear STACError before any pixel is read (issue 8 and the hunt around it)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
from affine import Affine
from conftest import write_tif
from stac_items import COLLECTION, DATA, LANDSAT, OFFLINE, S2, localize

import geoarray
from geoarray.errors import STACError

Case = Callable[[Path], tuple[Any, dict[str, Any]]]
DEAD = OFFLINE


@pytest.fixture(autouse=True)
def _no_outside_network(monkeypatch):
    """Python-level guard: nothing here may reach past this machine (pystac follows links with urllib)."""
    import socket

    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test tried to reach {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def _item(tmp: Path, **kw: Any) -> pystac.Item:
    d, _ = localize(LANDSAT, tmp, ["red", "nir08"], **kw)
    return pystac.Item.from_dict(d)


def collection_path(tmp: Path):
    return DATA / COLLECTION, {"bands": ["B04"]}


def collection_object(tmp: Path):
    return pystac.Collection.from_file(str(DATA / COLLECTION)), {"bands": ["B04"]}


def missing_local_href(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"])
    d["assets"]["red"]["href"] = str(tmp / "gone" / "red.tif")
    return [pystac.Item.from_dict(d)], {"bands": ["red"]}


def offline_remote_href(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"])
    d["assets"]["red"]["href"] = f"{DEAD}/landsat/red.tif"
    return [pystac.Item.from_dict(d)], {"bands": ["red"]}


def relative_href_against_offline_self(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"])
    d["assets"]["red"]["href"] = "red.tif"
    d["links"] = [{"rel": "self", "href": f"{DEAD}/stac/items/x.json"}]
    return [pystac.Item.from_dict(d)], {"bands": ["red"]}


def _proj_edit(key: str, value: Any) -> Case:
    def case(tmp: Path):
        d, _ = localize(LANDSAT, tmp, ["red"])
        d["properties"][key] = value
        return [pystac.Item.from_dict(d)], {"bands": ["red"]}

    return case


def proj_code_wrong(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"], proj_code=True)
    d["properties"]["proj:code"] = "EPSG:32616"
    return [pystac.Item.from_dict(d)], {"bands": ["red"]}


def two_crss(tmp: Path):
    a, _ = localize(LANDSAT, tmp / "a", ["red"], item_id="a")
    b, _ = localize(LANDSAT, tmp / "b", ["red"], item_id="b", datetime="2020-02-14T17:05:46Z")
    b["properties"]["proj:epsg"] = 32616
    write_tif(  # the file agrees with its item: only the two items disagree with each other
        Path(b["assets"]["red"]["href"]),
        np.ones((40, 50), np.uint16),
        crs="EPSG:32616",
        transform=Affine(*b["properties"]["proj:transform"][:6]),
        nodata=0,
    )
    return [pystac.Item.from_dict(a), pystac.Item.from_dict(b)], {"bands": ["red"]}


def _with(**kw: Any) -> Case:
    def case(tmp: Path):
        return [_item(tmp)], {"bands": ["red"], **kw}

    return case


def unknown_band(tmp: Path):
    return [_item(tmp)], {"bands": ["red", "swir"]}


def ambiguous_common_name(tmp: Path):
    d, _ = localize(S2, tmp, ["B05", "B06"])
    return [pystac.Item.from_dict(d)], {"bands": ["rededge"]}


def multiband_asset_by_key(tmp: Path):
    d, _ = localize(S2, tmp, ["visual"], counts={"visual": 3})
    return [pystac.Item.from_dict(d)], {"bands": ["visual"]}


def multiband_file_without_metadata(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["qa_pixel"], counts={"qa_pixel": 3})  # no eo:bands, no raster:bands
    return [pystac.Item.from_dict(d)], {"bands": ["qa_pixel"]}


def multiband_file_with_one_band_metadata(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"], counts={"red": 3})  # eo:bands lists one band
    return [pystac.Item.from_dict(d)], {"bands": ["red"]}


def multiband_on_stackstac(tmp: Path):
    d, _ = localize(S2, tmp, ["visual"], counts={"visual": 3})
    return [pystac.Item.from_dict(d)], {"bands": ["visual.1"], "engine": "stackstac"}


def same_band_twice(tmp: Path):
    return [_item(tmp)], {"bands": ["red", "B4"]}


def duplicate_band_names(tmp: Path):
    return [_item(tmp)], {"bands": ["red", "red"]}


def duplicate_item_ids(tmp: Path):
    it = _item(tmp)
    return [it, it.clone()], {"bands": ["red"]}


def not_raster_asset(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"])
    return [pystac.Item.from_dict(d)], {"bands": ["MTL.json"]}


def geotiff_as_items(tmp: Path):
    return write_tif(tmp / "scene.tif", np.ones((4, 4), np.uint16)), {"bands": ["red"]}


def plain_geojson(tmp: Path):
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": "aoi"},
                "geometry": {"type": "Point", "coordinates": [10.0, 50.0]},
            }
        ],
    }
    (tmp / "aoi.geojson").write_text(json.dumps(doc))
    return tmp / "aoi.geojson", {"bands": ["red"]}


def no_datetime(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"])
    d["properties"]["datetime"] = None
    (tmp / "item.json").write_text(json.dumps(d))
    return tmp / "item.json", {"bands": ["red"]}


def url_string(tmp: Path):
    return f"{DEAD}/stac/search", {"bands": ["red"]}


def folder_without_catalog(tmp: Path):
    (tmp / "items").mkdir()
    return tmp / "items", {"bands": ["red"]}


def catalog_with_remote_children(tmp: Path):
    cat = {
        "type": "Catalog",
        "id": "remote",
        "stac_version": "1.0.0",
        "description": "links out",
        "links": [{"rel": "child", "href": f"{DEAD}/child/catalog.json"}],
    }
    (tmp / "catalog.json").write_text(json.dumps(cat))
    return tmp / "catalog.json", {"bands": ["red"]}


def no_projection_metadata(tmp: Path):
    d, _ = localize(LANDSAT, tmp, ["red"])
    for k in ("proj:epsg", "proj:shape", "proj:transform"):
        del d["properties"][k]
    return [pystac.Item.from_dict(d)], {"bands": ["red"]}


CASES: list[tuple[str, Case, str]] = [
    (
        "collection-json",
        collection_path,
        r"Collection 'sentinel-2-l2a'.*no items.*describes items, it does not list them.*"
        r"planetarycomputer.*ItemCollection",
    ),
    ("collection-object", collection_object, r"Collection with no items.*search result saved to disk"),
    ("missing-local-href", missing_local_href, r"item 'LC08_L2SP.*asset 'red'.*gone/red.tif'.*no such file"),
    (
        "offline-remote-href",
        offline_remote_href,
        r"cannot open item 'LC08.*'http://127.0.0.1:9/landsat/red.tif'",
    ),
    (
        "relative-href-offline-self",
        relative_href_against_offline_self,
        r"cannot open .*127.0.0.1:9/stac/items/red.tif",
    ),
    (
        "proj-shape-wrong",
        _proj_edit("proj:shape", [50, 40]),
        r"proj:shape is \[50, 40\] but the file has \[40, 50\]",
    ),
    (
        "proj-transform-wrong",
        _proj_edit("proj:transform", [30, 0, 173115, 0, -30, 4904715]),
        r"proj:transform is .*173115.* but the file's geotransform is .*173085",
    ),
    (
        "proj-epsg-wrong",
        _proj_edit("proj:epsg", 32616),
        r"says CRS (EPSG:)?32616 but the file is in EPSG:32615",
    ),
    ("proj-code-wrong", proj_code_wrong, r"says CRS EPSG:32616 but the file is in EPSG:32615"),
    ("two-crss", two_crss, r"in 2 CRSs \(EPSG:32615, EPSG:32616\).*Pass crs="),
    (
        "bbox-outside",
        _with(bbox=(10.0, 50.0, 10.1, 50.1)),
        r"does not overlap any of the 1 item.*lon/lat \(-97",
    ),
    ("bbox-projected", _with(bbox=(173085, 4903515, 174585, 4904715)), r"longitude/latitude.*not projected"),
    ("bbox-three-numbers", _with(bbox=(10.0, 50.0, 10.1)), r"expected 4 finite numbers"),
    ("bbox-min-max-swapped", _with(bbox=(10.1, 50.0, 10.0, 50.1)), r"min < max"),
    ("resolution-zero", _with(resolution=0), r"positive pixel size"),
    ("resolution-string", _with(resolution="10m"), r"expected one positive number"),
    ("crs-unknown", _with(crs="EPSG:99999"), r"crs='EPSG:99999' is not a CRS"),
    ("dtype-unknown", _with(dtype="float33"), r"dtype='float33' is not a numpy dtype"),
    ("dtype-complex", _with(dtype="complex64"), r"expected an integer or float dtype"),
    ("check-unknown", _with(check="some"), r"check='some'; expected 'first', 'all' or 'none'"),
    (
        "unknown-band",
        unknown_band,
        r"lacks the requested band\(s\) \['swir'\].*assets \[.*'nir08'.*'red', 'swir16'.*band names \[.*'B4'",
    ),
    (
        "ambiguous-common-name",
        ambiguous_common_name,
        r"'rededge' is ambiguous.*\['B05', 'B06', 'B07', 'B8A'\]",
    ),
    (
        "multiband-asset-by-key",
        multiband_asset_by_key,
        r"'visual'.*has 3 bands.*'visual.1'.*named \['B04', 'B03', 'B02'\]",
    ),
    (
        "multiband-file-no-metadata",
        multiband_file_without_metadata,
        r"file has 3 bands.*band 1 only.*\['qa_pixel.1', 'qa_pixel.2', 'qa_pixel.3'\]",
    ),
    (
        "multiband-file-one-band-metadata",
        multiband_file_with_one_band_metadata,
        r"describes 1 band\(s\) but the file has 3",
    ),
    (
        "multiband-on-stackstac",
        multiband_on_stackstac,
        r"engine='stackstac' cannot read bands of multi-band assets",
    ),
    ("same-band-two-names", same_band_twice, r"'red' and 'B4' are the same band"),
    ("duplicate-band-names", duplicate_band_names, r"lists \['red'\] more than once"),
    ("bands-none", _with(bands=None), r"bands=None; expected a list of band names"),
    ("bands-comma-string", _with(bands="red,nir08"), r"\['red,nir08'\].*not 'red,nir'"),
    (
        "no-projection-metadata",
        no_projection_metadata,
        r"no projection metadata.*pass crs= and resolution=.*crs='EPSG:32615', resolution=30.0",
    ),
    ("duplicate-item-ids", duplicate_item_ids, r"appear more than once"),
    ("not-raster-asset", not_raster_asset, r"'MTL.json'.*not raster data"),
    ("geotiff-as-items", geotiff_as_items, r"not STAC JSON.*It is a TIFF.*from_geotiff"),
    ("plain-geojson", plain_geojson, r"plain GeoJSON, not a STAC Item"),
    ("no-datetime", no_datetime, r"malformed.*start_datetime"),
    ("url-string", url_string, r"is a URL; from_stac reads local STAC files only"),
    ("folder-without-catalog", folder_without_catalog, r"has no catalog.json or collection.json"),
    ("catalog-remote-children", catalog_with_remote_children, r"links to remote children.*does not crawl"),
]


@pytest.mark.parametrize(("case", "expected"), [(c, e) for _, c, e in CASES], ids=[n for n, _, _ in CASES])
def test_bad_stac_input_gives_a_clear_error(tmp_path, case, expected):
    items, kw = case(tmp_path)
    with pytest.raises(STACError, match=expected):
        geoarray.from_stac(items, **kw)


def test_the_remote_probe_fails_fast(tmp_path):
    """An unreachable host costs one short probe, not a hang at compute time."""
    import time

    items, kw = offline_remote_href(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(STACError):
        geoarray.from_stac(items, **kw)
    assert time.perf_counter() - t0 < 10


def test_check_all_finds_a_wrong_item_after_the_first(tmp_path):
    a, _ = localize(LANDSAT, tmp_path / "a", ["red"], item_id="a")
    b, _ = localize(LANDSAT, tmp_path / "b", ["red"], item_id="b", datetime="2020-02-14T17:05:46Z")
    b = copy.deepcopy(b)
    b["properties"]["proj:shape"] = [41, 50]
    items = [pystac.Item.from_dict(a), pystac.Item.from_dict(b)]
    geoarray.from_stac(items, bands=["red"])  # "first" probes item a only
    with pytest.raises(STACError, match=r"item 'b'.*proj:shape is \[41, 50\]"):
        geoarray.from_stac(items, bands=["red"], check="all")
