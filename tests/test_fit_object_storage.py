"""fit writes into object storage: ``out``, ``resume`` and ``log_dir`` as s3:// URLs on the local S3 server
(tests/s3_server.py). The run writes into a local working folder and uploads each finished file (one PUT each);
what lands in the bucket must be what a local run writes, and a run killed between epochs resumes from it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile

import numpy as np
import pytest
import torch

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError

KW = dict(
    task="segmentation",
    model="unet",
    model_kwargs={"width": 4, "depth": 2},
    chip_size=32,
    batch_size=4,
    lr=1e-3,
    seed=1,
    steps_per_epoch=2,
    val_fraction=0.25,
    progress=False,
)


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=96, n_times=1, seed=4, chunks=48)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder, so a test sees every working folder fit makes (and that it is removed)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _side_epoch(s3, url: str) -> int:
    """The epoch recorded in a resume side file in the bucket (its safetensors JSON header)."""
    blob = s3.fs.cat_file(url)
    n = int.from_bytes(blob[:8], "little")
    return int(json.loads(json.loads(blob[8 : 8 + n])["__metadata__"]["state"])["epoch"])


def _rows(text: str) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(io.StringIO(text))]


def test_fit_into_s3_writes_what_a_local_fit_writes_and_predict_reads_it(s3, cube, tmp_path, private_tmp):
    so = s3.storage_options
    bucket = s3.bucket()
    url = f"s3://{bucket}/run/m.safetensors"
    got = geoarray.fit(cube, out=url, log_dir=f"s3://{bucket}/run/log", storage_options=so, epochs=2, **KW)
    local = geoarray.fit(cube, out=str(tmp_path / "m.safetensors"), log_dir=str(tmp_path / "log"), epochs=2, **KW)
    assert got == url  # the URL itself, not a mangled local Path("s3:/...")
    # exactly the checkpoint and the metrics: no side file (a finished run deletes it), no write-check marker
    assert sorted(s3.digest(f"s3://{bucket}/run")) == ["log/metrics.csv", "m.safetensors"]
    assert s3.digest(f"s3://{bucket}/run")["m.safetensors"] == hashlib.sha256(local.read_bytes()).hexdigest()
    ck, ref = geoarray.load_checkpoint(url, storage_options=so), geoarray.load_checkpoint(local)
    wr, wl = ck.model.state_dict(), ref.model.state_dict()
    assert wr.keys() == wl.keys() and all(torch.equal(wr[k], wl[k]) for k in wl)
    remote_rows = _rows(s3.fs.cat_file(f"{bucket}/run/log/metrics.csv").decode())
    assert remote_rows == _rows((tmp_path / "log" / "metrics.csv").read_text()) and len(remote_rows) == 2
    out = geoarray.predict(cube, url, storage_options=so)
    np.testing.assert_array_equal(out["mask"].values, geoarray.predict(cube, local)["mask"].values)
    assert not list(private_tmp.glob("geoarray-fit-*"))  # the working folder is gone


class _Killed(BaseException):
    """A kill stand-in that nothing in the library catches."""


def test_a_run_killed_mid_epoch_resumes_from_s3_to_the_uninterrupted_weights(
    s3, cube, tmp_path, private_tmp, monkeypatch
):
    """As tests/test_train.py::test_resume_continues_the_same_run, with the run in the bucket: killed while
    saving epoch 3 (after its side file was written locally, before the upload), the bucket holds epoch 2's
    files; resume= the URL continues to 4 epochs and ends with the uninterrupted local run's weights."""
    from geoarray.training import state
    from geoarray.training.state import load_state

    so = s3.storage_options
    kw = {**KW, "epochs": 4, "schedule": "cosine", "warmup_epochs": 1.5, "keep_state": True}
    whole = tmp_path / "whole.safetensors"
    geoarray.fit(cube, out=str(whole), **kw)
    bucket = s3.bucket()
    url = f"s3://{bucket}/m.safetensors"
    real_save = state.save_state

    def save_then_kill(*args, epoch, **kwargs):
        path = real_save(*args, epoch=epoch, **kwargs)
        if epoch == 3:
            raise _Killed
        return path

    monkeypatch.setattr(state, "save_state", save_then_kill)
    with pytest.raises(_Killed):
        geoarray.fit(cube, out=url, log_dir=f"s3://{bucket}/l1", storage_options=so, **kw)
    monkeypatch.undo()
    assert _side_epoch(s3, f"{bucket}/m.safetensors.train-state.safetensors") == 2  # the last uploaded epoch
    assert not list(private_tmp.glob("geoarray-fit-*"))  # a killed run removes its working folder too
    geoarray.fit(cube, out=url, resume=url, log_dir=f"s3://{bucket}/l2", storage_options=so, **kw)
    assert [int(r["epoch"]) for r in _rows(s3.fs.cat_file(f"{bucket}/l2/metrics.csv").decode())] == [3, 4]
    side = tmp_path / "back.safetensors.train-state.safetensors"
    s3.fs.get_file(f"{bucket}/m.safetensors.train-state.safetensors", str(side))
    a, b = load_state(whole), load_state(tmp_path / "back.safetensors")
    assert a is not None and b is not None and a.epoch == b.epoch == 4
    assert all(torch.equal(b.weights[k], w) for k, w in a.weights.items())
    ck, ref = geoarray.load_checkpoint(url, storage_options=so), geoarray.load_checkpoint(whole)
    assert ck.meta["training"]["epoch"] == ref.meta["training"]["epoch"]
    assert all(torch.equal(v, ref.model.state_dict()[k]) for k, v in ck.model.state_dict().items())


@pytest.mark.parametrize(
    "where, match",
    [
        (dict(out="s3://no-such-bucket/m.safetensors"), r"out='s3://no-such-bucket/m.safetensors': the bucket "
         r"'no-such-bucket' does not exist"),
        (dict(log_dir="s3://no-such-bucket/log"), r"log_dir=.*the bucket 'no-such-bucket' does not exist"),
        (dict(out="s3://{bucket}"), r"is a bucket or a prefix.*'s3://t-\w+/model.safetensors'"),
        (dict(out="s3://{bucket}/notes"), r"out='s3://t-\w+/notes' is a bucket or a prefix"),
        (dict(log_dir="s3://{bucket}/notes/readme.txt"), r"is an object \(a file\); expected a prefix"),
        (dict(resume="s3://{bucket}/nope.safetensors"), r"resume=.*no such object; expected the checkpoint"),
        (dict(storage_options="key=x"), r"storage_options='key=x'; expected a dict"),
        (dict(local_options=True), r"storage_options were given, but out, resume and log_dir are local paths"),
        (dict(closed=True), r"out='s3://t-\w+/m.safetensors' cannot be written \(EndpointConnectionError"),
    ],
)
def test_unusable_urls_are_refused_before_any_training(s3, cube, tmp_path, monkeypatch, where, match):
    import geoarray.training.prepare as prepare

    def no_work(*a, **k):
        raise AssertionError("fit started preparing the run")

    monkeypatch.setattr(prepare, "prepare", no_work)
    bucket = s3.bucket(versioned=False)
    s3.fs.pipe_file(f"{bucket}/notes/readme.txt", b"hello")
    so = s3.storage_options
    opts = dict(out=str(tmp_path / "m.safetensors"), storage_options=so)
    if where.pop("local_options", False):
        pass
    elif where.pop("closed", False):
        opts.update(out=f"s3://{bucket}/m.safetensors", storage_options={
            **so, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "config_kwargs": {"retries": {"max_attempts": 1}}
        })
    else:
        opts.update({k: v.format(bucket=bucket) for k, v in where.items()})
    with pytest.raises(TrainError, match=match):
        geoarray.fit(cube, epochs=1, **{**KW, **opts})
    assert not (tmp_path / "m.safetensors").exists()
    assert s3.fs.find(bucket) == [f"{bucket}/notes/readme.txt"]  # nothing written, no marker left


def test_cli_fit_writes_to_s3_with_the_environment_credentials(s3, cube, tmp_path):
    """`geoarray fit STORE -o s3://...`: the CLI has no option for credentials; s3fs takes them (and here the
    endpoint, AWS_ENDPOINT_URL) from the environment, which the S3 fixture set."""
    from typer.testing import CliRunner

    from geoarray.cli import app

    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    bucket = s3.bucket()
    args = ["fit", str(store), "-o", f"s3://{bucket}/m.safetensors", "--log-dir", f"s3://{bucket}/log",
            "--model-kw", "width=4", "--model-kw", "depth=2", "--chip-size", "32", "--epochs", "1",
            "--batch-size", "4"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"wrote s3://{bucket}/m.safetensors (best epoch 1" in r.output
    assert sorted(s3.digest(f"s3://{bucket}")) == ["log/metrics.csv", "m.safetensors"]
    r = CliRunner().invoke(app, [*args[:3], "s3://no-such-bucket/m.safetensors", *args[4:]])
    assert r.exit_code == 2 and "the bucket 'no-such-bucket'" in r.output


@pytest.mark.slow  # a 2-worker LocalCluster: ~15 s on a quiet machine, ~40 s on a busy one
def test_ddp_fit_into_s3_uploads_from_rank_0(s3, tmp_path):
    """fit(client=): every rank works in its own folder, rank 0 uploads; the result is the URL."""
    from geoarray.distributed import cluster

    so = s3.storage_options
    bucket = s3.bucket()
    store = tmp_path / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=128, n_times=1, seed=0), store, chunk=64)
    url = f"s3://{bucket}/m.safetensors"
    with cluster(n_workers=2) as client:
        got = geoarray.fit(geoarray.open_cube(store), client=client, out=url, log_dir=f"s3://{bucket}/log",
                           storage_options=so, epochs=1, **{**KW, "batch_size": 2})
    assert got == url
    assert sorted(s3.digest(f"s3://{bucket}")) == ["log/metrics.csv", "m.safetensors"]
    assert geoarray.load_checkpoint(url, storage_options=so).meta["training"]["world_size"] == 2


def test_a_tasks_own_log_files_reach_the_bucket(s3):
    """barlow_twins writes a cross-correlation matrix per epoch and a picture into log_dir: each is uploaded."""
    c = synthetic_cube(size=48, n_times=4, seed=0, chunks=48).drop_vars("labels")
    bucket = s3.bucket()
    geoarray.fit(c, task="barlow_twins", model="pixel_cnn", model_kwargs={"width": 8, "out_channels": 8},
                 task_kwargs={"view_dates": 2, "projector_dim": 16}, chip_size=16, pixels_per_chip=32,
                 batch_size=64, epochs=2, val_fraction=0.0, seed=0, progress=False,
                 out=f"s3://{bucket}/bt.safetensors", log_dir=f"s3://{bucket}/log", storage_options=s3.storage_options)
    names = ["cross_correlation.png", "cross_correlation_epoch001.npy", "cross_correlation_epoch002.npy", "metrics.csv"]
    assert sorted(s3.digest(f"s3://{bucket}/log")) == names
    assert s3.fs.cat_file(f"{bucket}/log/cross_correlation.png")[:8] == b"\x89PNG\r\n\x1a\n"
    mats = [np.load(io.BytesIO(s3.fs.cat_file(f"{bucket}/log/{n}")), allow_pickle=False) for n in names[1:3]]
    assert all(m.shape == (16, 16) for m in mats) and not np.array_equal(*mats)  # one per epoch, as trained
