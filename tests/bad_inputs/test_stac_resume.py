"""A resumed stac_features run (same store) must read what the first run read: the same items' band names for
the checkpoint's bands, the same engine and the same items. Otherwise its missing chunks would be made from other
pixels than the chunks already written, and the output would be marked complete at the end. Refused before any
write (StoreExistsError); a change of grid (crs, resolution, bbox, or the dates time keeps) is refused by
predict's grid check; an option that leaves the grid and the items as they were resumes to the same store.

The partial store is the state a killed run leaves (tests/test_stac_features.py kills one): outputs marked
``geoarray_complete: false`` with some chunks missing; here it is made by deleting chunks of a finished run.
"""

from __future__ import annotations

import json

import pystac
import pytest
from conftest import tree_digest
from stac_items import make_catalog, make_ckpt
from typer.testing import CliRunner

import geoarray
from geoarray.cli import app
from geoarray.errors import StoreError, StoreExistsError

runner = CliRunner()
OPTS = dict(crs="EPSG:32633", resolution=20.0, chunk=32, progress=False)


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacresume")
    items = make_catalog(root / "cat", size=64)
    ckpt = make_ckpt(root / "m.safetensors")
    whole = root / "whole.zarr"
    geoarray.stac_features(items, ckpt, whole, **OPTS)
    return {"items": items, "ckpt": ckpt, "whole": whole, "root": root}


def _partial(cat, tmp_path):
    """A copy of the finished store as a killed run leaves it: every other chunk gone, outputs incomplete."""
    import shutil

    store = tmp_path / "f.zarr"
    shutil.copytree(cat["whole"], store)
    for var in ("mask", "probabilities"):
        meta = store / var / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["attributes"]["geoarray_complete"] = False
        meta.write_text(json.dumps(doc))
        chunks = sorted(p for p in (store / var / "c").rglob("*") if p.is_file())
        for p in chunks[::2]:
            p.unlink()
    return store


def test_the_partial_store_resumes_to_the_finished_one(cat, tmp_path):
    """The same options finish it byte for byte (so the partial store is a real resume point)."""
    store = _partial(cat, tmp_path)
    geoarray.stac_features(cat["items"], cat["ckpt"], store, **OPTS)
    assert tree_digest(store) == tree_digest(cat["whole"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"bands": ["nir", "green", "red"]},
         r"'probabilities' in .* first run read bands 'red,green,nir'; this run reads bands 'nir,green,red'.*"
         r"Resume with bands='red,green,nir' \(the first run's\), or pass overwrite=True"),
        ({"engine": "stackstac"},
         r"first run read engine 'odc'; this run reads engine 'stackstac'.*Resume with engine='odc'"),
    ],
)  # fmt: skip
def test_resume_with_other_bands_or_engine_is_refused_before_any_write(cat, tmp_path, kw, message):
    """Before: the run resumed silently, and the store held chunks of two inputs under one complete output."""
    store = _partial(cat, tmp_path)
    before = tree_digest(store)
    with pytest.raises(StoreExistsError, match=message):
        geoarray.stac_features(cat["items"], cat["ckpt"], store, **{**OPTS, **kw})
    assert tree_digest(store) == before
    again = geoarray.stac_features(cat["items"], cat["ckpt"], store, overwrite=True, **{**OPTS, **kw})
    assert again["mask"].attrs["stac_bands"] == ",".join(kw.get("bands", ["red", "green", "nir"]))


def test_cli_resume_with_other_bands_names_the_flag(cat, tmp_path):
    store = _partial(cat, tmp_path)
    before = tree_digest(store)
    r = runner.invoke(app, ["stac-features", str(cat["items"]), "-c", str(cat["ckpt"]), "-o", str(store),
                            "--crs", "EPSG:32633", "--resolution", "20", "--chunk", "32", "--bands", "green,red,nir"])  # fmt: skip
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Resume with --bands red,green,nir (the first run's), or pass --overwrite" in r.output, r.output
    assert tree_digest(store) == before


def test_resume_with_other_items_on_the_same_dates_is_refused(cat, tmp_path):
    """Another catalog on the same grid and dates (e.g. a reprocessed collection): other item ids."""
    items = pystac.ItemCollection.from_file(str(cat["items"]))
    renamed = []
    for i in items:
        c = i.clone()
        c.id = i.id + "-v2"
        renamed.append(c)
    store = _partial(cat, tmp_path)
    before = tree_digest(store)
    with pytest.raises(StoreExistsError, match=r"first run read items '3 items, sha256 \w+'; this run reads items "
                                               r"'3 items, sha256 \w+'.*Resume with the first run's items"):  # fmt: skip
        geoarray.stac_features(renamed, cat["ckpt"], store, **OPTS)
    assert tree_digest(store) == before


@pytest.mark.parametrize(
    "kw", [{"time": ("2022-05-01", None)}, {"resolution": 40.0}, "bbox"], ids=["time-drops-a-date", "resolution", "bbox"]
)
def test_resume_on_another_grid_is_refused_by_the_grid_check(cat, tmp_path, kw):
    if kw == "bbox":  # the south-west quarter of the first item
        w, s, e, n = pystac.ItemCollection.from_file(str(cat["items"])).items[0].bbox
        kw = {"bbox": (w, s, (w + e) / 2, (s + n) / 2)}
    store = _partial(cat, tmp_path)
    before = tree_digest(store)
    with pytest.raises(StoreError, match=r"(steps but the store has|coordinates differ from the store's)"):
        geoarray.stac_features(cat["items"], cat["ckpt"], store, **{**OPTS, **kw})
    assert tree_digest(store) == before


def test_options_that_keep_the_grid_and_items_are_harmless(cat, tmp_path):
    """A time range that keeps every date: the same items, the same grid, so the same pixels."""
    store = _partial(cat, tmp_path)
    geoarray.stac_features(cat["items"], cat["ckpt"], store, **{**OPTS, "time": ("2022-01-01", "2022-12-31")})
    assert tree_digest(store) == tree_digest(cat["whole"])
