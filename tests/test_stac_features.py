"""stac_features / ``geoarray stac-features``: STAC items -> cube -> predict -> Zarr, on a real local catalog.

The catalog: 3 dates of 3 single-band uint16 COGs; the last date lies in the neighbouring UTM zone (its file is
the same ground reprojected), so loading onto one grid reprojects it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
from conftest import tree_digest
from stac_items import BANDS, make_catalog, make_ckpt
from typer.testing import CliRunner

import geoarray
from geoarray.cli import app
from geoarray.errors import BandError

runner = CliRunner()
OPTS = dict(crs="EPSG:32633", resolution=20.0, chunk=32)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacfeat")
    return {"items": make_catalog(root / "cat"), "ckpt": make_ckpt(root / "m.safetensors")}


@pytest.fixture(scope="module")
def direct(catalog):
    """A direct predict on from_stac of the same items: the reference."""
    cube = geoarray.from_stac(catalog["items"], bands=BANDS, **OPTS)
    return geoarray.predict(cube, catalog["ckpt"]).compute()


def _same(out, ref):
    for c in ("time", "y", "x"):
        np.testing.assert_array_equal(out[c].values, ref[c].values)
    assert out.rio.crs == ref.rio.crs and out.rio.crs.to_epsg() == 32633
    assert out.rio.transform() == ref.rio.transform()
    np.testing.assert_array_equal(out["probabilities"].values, ref["probabilities"].values)
    np.testing.assert_array_equal(out["mask"].values, ref["mask"].values)


def test_stac_features_equals_a_direct_predict(catalog, direct, tmp_path):
    out = geoarray.stac_features(catalog["items"], catalog["ckpt"], tmp_path / "f.zarr", progress=False, **OPTS)
    _same(out, direct)
    assert "imagery" not in out.data_vars  # only the outputs are stored
    assert out["mask"].attrs["geoarray_complete"] is True and out["mask"].attrs["precision"] == "32"
    # the zone-34 date was reprojected onto the zone-33 grid, and gives outputs there: on exactly the pixels
    # where every band holds data (nodata 0 in any band, or outside the footprint, is invalid, not data)
    img = geoarray.from_stac(catalog["items"], bands=BANDS, **OPTS).imagery.values
    covered = (img != 0).all(1)  # (time, y, x)
    assert direct.sizes["time"] == 3 and covered[2].mean() > 0.7 and not covered.all()
    np.testing.assert_array_equal(np.isfinite(direct["probabilities"].values).all(1), covered)
    np.testing.assert_array_equal(direct["mask"].values != direct["mask"].attrs["nodata"], covered)


def test_stac_features_on_a_local_cluster_of_two_workers(catalog, direct, local_cluster, tmp_path):
    """On the session's LocalCluster (2 worker processes), by its address: what --scheduler does."""
    address = local_cluster.scheduler.address
    out = geoarray.stac_features(
        catalog["items"], catalog["ckpt"], tmp_path / "f.zarr", scheduler=address, progress=False, **OPTS
    )
    _same(out, direct)


KILLER = """
import os, signal, sys
import dask
from dask.callbacks import Callback
import geoarray

class KillAfter(Callback):  # SIGKILL this process after {n} output blocks are in the store
    def __init__(self):
        super().__init__()
        self.n = 0
    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, tuple) and str(key[0]).startswith("geoarray-write-"):
            self.n += 1
            if self.n >= {n}:
                os.kill(os.getpid(), signal.SIGKILL)

with dask.config.set(scheduler="threads", num_workers=1), KillAfter():
    geoarray.stac_features(sys.argv[1], sys.argv[2], sys.argv[3], crs="EPSG:32633", resolution=20.0, chunk=32,
                           progress=False)
"""


def test_a_killed_run_resumes_to_the_same_store(catalog, tmp_path):
    """Killed (SIGKILL) after 5 of 27 blocks, run again: the store equals an uninterrupted run's, byte for byte."""
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER.format(n=5)))
    store = tmp_path / "resumed.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(geoarray.__file__).parents[1]), *sys.path])}
    args = [sys.executable, str(script), str(catalog["items"]), str(catalog["ckpt"]), str(store)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    written = sorted(p.name for p in (store / "mask" / "c").rglob("*") if p.is_file())
    assert 5 <= len(written) < 27  # killed mid-run: some chunks, not all
    partial = geoarray.cube._open_zarr(store)
    assert partial["mask"].attrs["geoarray_complete"] is False
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and "/c/" in str(p)}

    r = runner.invoke(  # the same run again, from the command line: it finishes the missing chunks
        app,
        ["stac-features", str(catalog["items"]), "--ckpt", str(catalog["ckpt"]), "-o", str(store),
         "--crs", "EPSG:32633", "--resolution", "20", "--chunk", "32"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "wrote mask, probabilities" in r.output
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the chunks of the first run were kept
    whole = tmp_path / "whole.zarr"
    geoarray.stac_features(catalog["items"], catalog["ckpt"], whole, progress=False, **OPTS)
    assert tree_digest(store) == tree_digest(whole)


def test_cli_outputs_and_device(catalog, direct, tmp_path):
    """--outputs mask writes the mask alone, equal to the direct predict's; --device cpu runs there."""
    store = tmp_path / "m.zarr"
    r = runner.invoke(
        app,
        ["stac-features", str(catalog["items"]), "--ckpt", str(catalog["ckpt"]), "-o", str(store), "--crs",
         "EPSG:32633", "--resolution", "20", "--chunk", "32", "--outputs", "mask", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = geoarray.cube._open_zarr(store)
    assert [n for n in out.data_vars if "checkpoint_sha256" in out[n].attrs] == ["mask"]
    np.testing.assert_array_equal(out["mask"].values, direct["mask"].values)


def test_cli_with_checkpoint_and_store_on_s3(catalog, direct, s3):
    """`geoarray stac-features --ckpt s3://... -o s3://...`, credentials and endpoint from the environment (the S3
    fixture sets them): the checkpoint URL is read as a URL (a Path would fold 's3://' into 's3:/')."""
    bucket = s3.bucket(versioned=False)
    s3.fs.put_file(str(catalog["ckpt"]), f"s3://{bucket}/m.safetensors")
    r = runner.invoke(
        app,
        ["stac-features", str(catalog["items"]), "--ckpt", f"s3://{bucket}/m.safetensors", "-o",
         f"s3://{bucket}/f.zarr", "--crs", "EPSG:32633", "--resolution", "20", "--chunk", "32", "--outputs", "mask"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = xr.open_zarr(f"s3://{bucket}/f.zarr", consolidated=False, storage_options=s3.storage_options)
    np.testing.assert_array_equal(out["mask"].values, direct["mask"].values)


def test_bands_are_checked_before_any_pixel_and_can_be_renamed(catalog, direct, tmp_path):
    other = make_ckpt(tmp_path / "b.safetensors", bands=["B04", "B03", "swir"])
    store = tmp_path / "f.zarr"
    with pytest.raises(BandError, match=r"lack band\(s\) \['B03', 'B04', 'swir'\].*scene-0.*'green', 'nir', 'red'"):
        geoarray.stac_features(catalog["items"], other, store, **OPTS)
    assert not store.exists()
    renamed = make_ckpt(tmp_path / "r.safetensors", bands=["B04", "B03", "B08"])
    out = geoarray.stac_features(
        catalog["items"], renamed, store, bands=BANDS, time=("2022-04-01", "2022-05-01"), progress=False, **OPTS
    )
    first_two = list(pystac.ItemCollection.from_file(str(catalog["items"])))[:2]  # June is outside the range
    ref = geoarray.predict(geoarray.from_stac(first_two, bands=BANDS, **OPTS), catalog["ckpt"])
    assert list(out["time"].values) == list(direct["time"].values[:2])
    np.testing.assert_array_equal(out["probabilities"].values, ref["probabilities"].values)
