"""Cubes and checkpoints in object storage: a real S3 API served by moto on localhost (tests/s3_server.py).

The guarantees of local stores must hold there too: outputs written chunk by chunk, a killed run resumed
without rewriting what was done, existing variables never rewritten, the same bytes as a local store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_checkpoint, tree_digest

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import CheckpointError, StoreError, StoreExistsError, StoreNotFoundError

CLASSES = ["a", "b", "c", "d", "e"]
OUTPUTS = ("mask", "probabilities")


def _is_output(key: str) -> bool:
    return key.split("/")[0] in (*OUTPUTS, "class")


def test_cube_round_trip_and_append_on_s3(s3, tmp_path):
    url = f"s3://{s3.bucket()}/site.zarr"
    so = s3.storage_options
    c = synthetic_cube(size=64, n_times=1, seed=1)
    assert geoarray.write_cube(c, url, chunk=32, storage_options=so) == ["imagery", "labels", "valid"]
    back = geoarray.open_cube(url, storage_options=so)
    np.testing.assert_array_equal(back.imagery.values, c.imagery.values)
    assert back.rio.crs == c.rio.crs and list(back.band.values) == list(c.band.values)
    # the same bytes as a local store
    geoarray.write_cube(c, tmp_path / "site.zarr", chunk=32)
    assert s3.digest(url) == tree_digest(tmp_path / "site.zarr")
    with pytest.raises(StoreExistsError, match="mode='w-' never overwrites"):
        geoarray.write_cube(c, url, storage_options=so)
    # mode="a" adds a variable and leaves every existing object untouched (one version each)
    before = s3.digest(url)
    ndvi = (back.imagery.sel(band="nir") - back.imagery.sel(band="red")).rename("ndvi").to_dataset()
    assert geoarray.write_cube(ndvi, url, mode="a", chunk=32, storage_options=so) == ["ndvi"]
    after = s3.digest(url)
    assert {k: v for k, v in after.items() if not k.startswith("ndvi/")} == before
    versions = s3.versions(url)  # chunks are never rewritten (xarray rewrites metadata, to the same bytes)
    assert [k for k in before if "/c/" in k] and all(versions[k] == 1 for k in before if "/c/" in k)
    np.testing.assert_allclose(
        geoarray.open_cube(url, storage_options=so).ndvi.values, ndvi.ndvi.values, rtol=0, atol=0
    )


def test_store_errors_on_s3(s3, tmp_path):
    so = s3.storage_options
    bucket = s3.bucket()
    with pytest.raises(StoreNotFoundError, match="nothing under that prefix"):
        geoarray.open_cube(f"s3://{bucket}/missing.zarr", storage_options=so)
    s3.fs.pipe_file(f"{bucket}/notes/readme.txt", b"hello")
    with pytest.raises(StoreError, match="not a Zarr store"):
        geoarray.open_cube(f"s3://{bucket}/notes", storage_options=so)
    with pytest.raises(StoreExistsError, match="nothing was deleted"):
        geoarray.write_cube(synthetic_cube(size=32, n_times=1), f"s3://{bucket}/notes", mode="w", storage_options=so)
    assert s3.fs.cat_file(f"{bucket}/notes/readme.txt") == b"hello"
    with pytest.raises(StoreError, match="apply to URLs only"):
        geoarray.open_cube(tmp_path / "x.zarr", storage_options=so)
    with pytest.raises(StoreError, match=r"the bucket 'no-such-bucket' .* does not exist"):
        geoarray.write_cube(synthetic_cube(size=32, n_times=1), "s3://no-such-bucket/c.zarr", storage_options=so)
    closed = {**so, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(StoreError, match=r"cannot reach 's3://.*/notes'.*EndpointConnectionError"):
        geoarray.open_cube(f"s3://{bucket}/notes", storage_options=closed)


_KILL_SCRIPT = """
import json, sys, dask, geoarray
dask.config.set(scheduler="synchronous")
so = json.loads(sys.argv[3])
cube = geoarray.open_cube(sys.argv[1], storage_options=so)
geoarray.predict(cube, sys.argv[2], store=sys.argv[1], storage_options=so)
"""


def test_predict_into_s3_resumes_after_kill_byte_identical(s3, tmp_path):
    """A predict into s3 (checkpoint on s3 too) is killed (SIGKILL) part-way; run again, it writes only the
    missing chunks, and the store equals an uninterrupted run byte for byte (the uninterrupted run is local:
    object storage holds exactly the bytes a local store holds, checked in the round-trip test above);
    existing variables are never rewritten."""
    so = s3.storage_options
    bucket = s3.bucket()
    c = synthetic_cube(size=(128, 128), n_times=1, seed=4)
    local_ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=8, depth=3)
    ckpt = f"s3://{bucket}/models/m.safetensors"
    s3.fs.put_file(str(local_ckpt), ckpt)
    a, loc = f"s3://{bucket}/a.zarr", tmp_path / "l.zarr"
    geoarray.write_cube(c, a, chunk=32, storage_options=so)
    geoarray.write_cube(c, loc, chunk=32)
    base = s3.digest(a)
    assert base == tree_digest(loc)
    geoarray.predict(geoarray.open_cube(loc), local_ckpt, store=loc)  # the uninterrupted run
    # a run killed part-way (no cleanup) ...
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, a, ckpt, json.dumps(so)])
    fs, deadline = s3.fs, time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if len(fs.find(f"{bucket}/a.zarr/mask/c")) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = s3.digest(a)
    n_mask = sum(k.startswith("mask/c/") for k in partial)
    assert 3 <= n_mask < 16
    assert geoarray.open_cube(a, storage_options=so)["mask"].attrs["geoarray_complete"] is False
    # ... run again: finishes the rest
    geoarray.predict(geoarray.open_cube(a, storage_options=so), ckpt, store=a, storage_options=so)
    done = s3.digest(a)
    assert done == tree_digest(loc)  # byte-identical to the uninterrupted run
    assert {k: v for k, v in done.items() if not _is_output(k)} == base  # other variables' bytes unchanged
    # blocks whose outputs were all written before the kill are not written again (a block killed between
    # its two outputs is run again whole: its first output is rewritten, with the same bytes)
    versions = s3.versions(a)
    done_blocks = [k.removeprefix("mask/c/") for k in partial if k.startswith("mask/c/")]
    done_blocks = [b for b in done_blocks if "probabilities/c/" + b.replace("/", "/0/", 1) in partial]
    assert len(done_blocks) >= 2
    kept = [f"mask/c/{b}" for b in done_blocks] + ["probabilities/c/" + b.replace("/", "/0/", 1) for b in done_blocks]
    rewritten = [k for k in kept if versions[k] > 1]
    assert not rewritten, f"chunks finished before the kill were written again: {rewritten[:4]}"
    assert all(versions[k] == 1 for k in base if "/c/" in k)  # imagery, labels, valid: written once


def test_checkpoint_on_s3(s3, tmp_path):
    so = s3.storage_options
    bucket = s3.bucket()
    local = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    url = f"s3://{bucket}/m.safetensors"
    s3.fs.put_file(str(local), url)
    ck, ref = geoarray.load_checkpoint(url, storage_options=so), geoarray.load_checkpoint(local)
    assert ck.sha256 == ref.sha256 and ck.path == url and ck.meta == ref.meta
    for (k, v), (k2, v2) in zip(ck.model.state_dict().items(), ref.model.state_dict().items(), strict=True):
        assert k == k2 and bool((v == v2).all())
    assert geoarray.checkpoint.read_metadata(url, storage_options=so) == ref.meta
    with pytest.raises(CheckpointError, match="no checkpoint object at"):
        geoarray.load_checkpoint(f"s3://{bucket}/nope.safetensors", storage_options=so)
    with pytest.raises(CheckpointError, match="is a prefix"):
        geoarray.load_checkpoint(f"s3://{bucket}", storage_options=so)
    damaged = bytearray(local.read_bytes())
    damaged[-3] ^= 0xFF
    s3.fs.pipe_file(f"{bucket}/bad.safetensors", bytes(damaged))
    with pytest.raises(CheckpointError, match="is damaged"):
        geoarray.load_checkpoint(f"s3://{bucket}/bad.safetensors", storage_options=so)


def test_fit_reads_a_cube_on_s3(s3, tmp_path):
    """fit on a cube in object storage (direct zarr reads through FsspecStore) learns exactly what it learns
    from the same cube on local disk."""
    so = s3.storage_options
    url = f"s3://{s3.bucket()}/c.zarr"
    c = synthetic_cube(size=128, n_times=1, seed=2)
    geoarray.write_cube(c, url, chunk=64, storage_options=so)
    geoarray.write_cube(c, tmp_path / "c.zarr", chunk=64)
    kw = dict(task="segmentation", model="unet", model_kwargs={"width": 4, "depth": 2}, chip_size=32, epochs=1,
              batch_size=4, lr=1e-3, seed=0, steps_per_epoch=2, val_fraction=0.25, progress=False)
    remote = geoarray.fit(geoarray.open_cube(url, storage_options=so), out=str(tmp_path / "r.safetensors"), **kw)
    local = geoarray.fit(geoarray.open_cube(tmp_path / "c.zarr"), out=str(tmp_path / "l.safetensors"), **kw)
    wr, wl = geoarray.load_checkpoint(remote).model.state_dict(), geoarray.load_checkpoint(local).model.state_dict()
    assert all(bool((wr[k] == wl[k]).all()) for k in wl)  # fit *into* s3: tests/test_fit_object_storage.py


def test_from_stac_reads_cogs_on_s3_through_gdal_vsis3(s3, stac_catalog):
    """Items whose COG hrefs are s3:// URLs on the local S3 server: the header probe and the pixel reads go
    through GDAL's /vsis3/ with the endpoint and credentials of storage_options (no AWS_S3_ENDPOINT in the
    environment), and give the files' values."""
    import pystac

    bucket = s3.bucket(versioned=False)
    items = []
    for item in pystac.Catalog.from_file(str(stac_catalog["path"])).get_items(recursive=True):
        item = item.clone()
        for key, asset in item.assets.items():
            url = f"s3://{bucket}/{item.id}/{key}.tif"
            s3.fs.put_file(asset.get_absolute_href(), url)
            asset.href = url
        items.append(item)
    assert "AWS_S3_ENDPOINT" not in __import__("os").environ
    ds = geoarray.from_stac(items, bands=["red", "nir"], check="all", storage_options=s3.storage_options)
    got = ds.imagery.values
    for t in range(3):
        for j, band in enumerate(["red", "nir"]):
            np.testing.assert_array_equal(got[t, j], stac_catalog["truth"][(t, band)])
    with pytest.raises(geoarray.errors.STACError, match="cannot open"):  # without the endpoint: refused, named
        geoarray.from_stac(items, bands=["red"], storage_options={"key": "x", "secret": "y", "client_kwargs": {
            "endpoint_url": "http://127.0.0.1:9"}})


def test_cli_predict_and_info_on_s3(s3, tmp_path):
    """`geoarray predict s3://.../site.zarr --ckpt s3://...` (credentials and endpoint from the environment, as the
    s3 fixture sets them) writes the same outputs as a local predict; `info` reads the cube there; a --output on
    object storage is refused before any work (a copy cut short there would pass for a whole one)."""
    from typer.testing import CliRunner

    from geoarray.cli import app

    so, bucket = s3.storage_options, s3.bucket()
    c = synthetic_cube(size=64, n_times=1, seed=3)
    url = f"s3://{bucket}/site.zarr"
    geoarray.write_cube(c, url, chunk=32, storage_options=so)
    local = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    s3.fs.put_file(str(local), f"s3://{bucket}/m.safetensors")
    runner = CliRunner()
    r = runner.invoke(app, ["info", url])
    assert r.exit_code == 0 and url in r.output and "EPSG" in r.output, r.output
    before = s3.digest(url)
    r = runner.invoke(app, ["predict", url, "--ckpt", f"s3://{bucket}/m.safetensors", "-o", f"s3://{bucket}/copy.zarr"])
    assert r.exit_code == 2 and f"--output 's3://{bucket}/copy.zarr' is on object storage; expected a local path" in r.output, r.output
    assert s3.digest(url) == before and not s3.fs.exists(f"{bucket}/copy.zarr")
    r = runner.invoke(app, ["predict", url, "--ckpt", f"s3://{bucket}/m.safetensors", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    ref = geoarray.predict(c.chunk({"y": 32, "x": 32}), local, device="cpu")
    out = geoarray.open_cube(url, storage_options=so)
    np.testing.assert_array_equal(out["mask"].values, ref["mask"].values)
    np.testing.assert_array_equal(out["probabilities"].values, ref["probabilities"].values)
