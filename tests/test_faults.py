"""A distributed predict that survives faults, on a real LocalCluster of worker processes (with Nannies).

- a worker SIGKILLed mid-predict: Dask reschedules its tasks and the store equals an uninterrupted run, byte for
  byte;
- a worker that runs out of memory is terminated and restarted by its Nanny, and the predict completes (its
  tasks are retried, within ``distributed.scheduler.allowed-failures``);
- a block that can never fit in a worker's memory ends in a clear PredictError, not a hang;
- the model's weights reach each worker once (not once per task), also from a checkpoint in object storage.

The kill test is repeated 20 times in a row (not in the default run) with:
``GEOARRAY_FAULT_REPEAT=20 python -m pytest tests/test_faults.py -k repeat -m slow``.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import make_checkpoint, tree_digest

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import PredictError
from geoarray.predict import clear_caches

pytestmark = pytest.mark.xdist_group("processes")  # worker processes: one xdist worker runs them (conftest.py)

CLASSES = ["a", "b", "c", "d", "e"]


def _cluster(**kw):
    from distributed import Client, LocalCluster

    opts = dict(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    opts.update(kw)
    cluster = LocalCluster(**opts)
    return cluster, Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def faulty():
    """A LocalCluster of its own: these tests kill its workers."""
    cluster, client = _cluster()
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def cube_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    ckpt = make_checkpoint(root / "m.safetensors", num_classes=5, classes=CLASSES, width=8, depth=3, seed=11)
    c = synthetic_cube(size=(256, 256), n_times=1, seed=5)
    ref = root / "ref.zarr"
    geoarray.write_cube(c, ref, chunk=32)
    return {"root": root, "cube": c, "ckpt": ckpt, "ref": ref, "done": False}


def _reference(faulty, cube_store):
    """The uninterrupted run, on the same cluster (so every block runs on the same kind of worker)."""
    if not cube_store["done"]:
        ref = cube_store["ref"]
        with faulty.as_current():
            geoarray.predict(geoarray.open_cube(ref), cube_store["ckpt"], store=ref)
        cube_store["done"] = True
    return tree_digest(cube_store["ref"])


def _wait_workers(client, n, timeout=120):
    deadline = time.time() + timeout
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
        if time.time() > deadline:
            raise TimeoutError(f"the Nanny did not bring back {n} workers in {timeout} s")
        time.sleep(0.1)


def _predict_in_thread(client, store, ckpt, **kw):
    """Start predict(store=) on the cluster in a thread; returns (thread, box with 'error' or 'out')."""
    box: dict = {}

    def run():
        try:
            with client.as_current():
                box["out"] = geoarray.predict(geoarray.open_cube(store), ckpt, store=store, **kw)
        except BaseException as e:  # handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _mask_chunks(store):
    folder = store / "mask" / "c"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _kill_worker_mid_predict(faulty, cube_store, name):
    want = _reference(faulty, cube_store)
    _wait_workers(faulty, 2)
    store = cube_store["root"] / f"{name}.zarr"
    geoarray.write_cube(cube_store["cube"], store, chunk=32)
    pids = faulty.run(os.getpid)
    victim = sorted(pids.items())[0][1]
    thread, box = _predict_in_thread(faulty, store, cube_store["ckpt"])
    deadline = time.time() + 120
    while _mask_chunks(store) < 6 and thread.is_alive() and time.time() < deadline:
        time.sleep(0.005)
    assert thread.is_alive() and _mask_chunks(store) < 64, "predict finished before the worker could be killed"
    os.kill(victim, signal.SIGKILL)
    killed_at = _mask_chunks(store)
    thread.join(300)
    assert not thread.is_alive(), "predict hung after a worker was killed"
    assert "error" not in box, box.get("error")
    assert killed_at < 64
    assert box["out"]["mask"].attrs["geoarray_complete"] is True
    assert tree_digest(store) == want  # byte for byte, every chunk of every variable
    _wait_workers(faulty, 2)  # the Nanny restarted the killed worker
    assert victim not in faulty.run(os.getpid).values()


def test_worker_killed_mid_predict_store_equals_uninterrupted_run(faulty, cube_store):
    _kill_worker_mid_predict(faulty, cube_store, "killed")


@pytest.mark.slow
def test_worker_kill_repeat(faulty, cube_store):
    """The kill test, GEOARRAY_FAULT_REPEAT times in a row (default 20); prints the pass count."""
    n = int(os.environ.get("GEOARRAY_FAULT_REPEAT", "20"))
    passed = 0
    for i in range(n):
        _kill_worker_mid_predict(faulty, cube_store, f"repeat{i}")
        passed += 1
        print(f"worker-kill run {i + 1}/{n} passed", flush=True)
    assert passed == n


def _memory_bomb(limit_mb: int) -> None:
    """Started on one worker: allocate (and touch) 100 MB every 10 ms, up to ``limit_mb``, and hold it until
    the Nanny terminates the process."""
    import numpy as np

    def grow():
        held = []
        for _ in range(limit_mb // 100):
            held.append(np.ones(100 * 2**20, dtype=np.uint8))
            time.sleep(0.01)
        time.sleep(600)

    threading.Thread(target=grow, daemon=True).start()


@pytest.mark.slow  # page faults run at ~30 MB/s on these machines: growing past the limit takes ~10 s
def test_worker_out_of_memory_is_restarted_and_predict_completes(cube_store):
    """A worker's memory grows past its limit mid-predict: its Nanny terminates it (at 95 % of memory_limit) and
    starts a new one; the lost tasks run again and the store equals an uninterrupted run."""
    import dask

    # A worker holds ~420 MB once torch and the model are loaded; 700 MB leaves room for the blocks, and the
    # Nanny terminates at 95 % (665 MB). Pausing (at 80 %) is off: this test is about termination.
    with dask.config.set({"distributed.worker.memory.pause": False}):
        cluster, client = _cluster(memory_limit="700MB")
    try:
        want = _reference_on(client, cube_store, "oom_ref")
        store = cube_store["root"] / "oom.zarr"
        geoarray.write_cube(cube_store["cube"], store, chunk=32)
        pids = client.run(os.getpid)
        addr, victim = sorted(pids.items())[0]
        thread, box = _predict_in_thread(client, store, cube_store["ckpt"])
        while _mask_chunks(store) < 3 and thread.is_alive():
            time.sleep(0.005)
        assert thread.is_alive()
        client.run(_memory_bomb, 3000, workers=[addr])  # capped at 3 GB: twice the limit
        thread.join(300)
        assert not thread.is_alive(), "predict hung after a worker ran out of memory"
        assert "error" not in box, box.get("error")
        assert tree_digest(store) == want
        _wait_workers(client, 2)
        assert victim not in client.run(os.getpid).values(), "the worker was not restarted"
    finally:
        client.close()
        cluster.close()


def _reference_on(client, cube_store, name):
    store = cube_store["root"] / f"{name}.zarr"
    geoarray.write_cube(cube_store["cube"], store, chunk=32)
    with client.as_current():
        geoarray.predict(geoarray.open_cube(store), cube_store["ckpt"], store=store)
    return tree_digest(store)


@pytest.mark.slow
def test_block_too_big_for_the_workers_memory_is_a_clear_error(tmp_path):
    """Every attempt at a block exceeds memory_limit: after distributed's allowed-failures the run stops with
    a PredictError that says what happened and how to fix it, and the chunks written so far stay (resumable)."""
    import dask

    ckpt = make_checkpoint(tmp_path / "big.safetensors", num_classes=5, classes=CLASSES, width=32, depth=3)
    store = tmp_path / "big.zarr"
    geoarray.write_cube(synthetic_cube(size=(2048, 2048), n_times=1, seed=1), store, chunk=2048)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster, client = _cluster(n_workers=1, memory_limit="900MB")
    try:
        with client.as_current(), pytest.raises(PredictError, match=r"dask workers died running a predict block"):
            geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    finally:
        client.close()
        cluster.close()


def _loads() -> int:
    from geoarray import _inference

    return _inference.LOADS


def test_weights_reach_each_worker_once_from_s3(local_cluster, s3, tmp_path):
    """Distributed predict with the checkpoint and the store on s3: each worker that runs blocks loads the
    checkpoint exactly once (a counter in the per-process model cache), however many blocks it runs."""
    from distributed import get_task_stream

    so = s3.storage_options
    bucket = s3.bucket(versioned=False)
    local = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3, seed=23)
    ckpt, store = f"s3://{bucket}/m.safetensors", f"s3://{bucket}/c.zarr"
    s3.fs.put_file(str(local), ckpt)
    geoarray.write_cube(synthetic_cube(size=(128, 128), n_times=1, seed=6), store, chunk=32, storage_options=so)
    before = local_cluster.run(_loads)
    try:
        with local_cluster.as_current(), get_task_stream(local_cluster) as ts:
            cube = geoarray.open_cube(store, storage_options=so)
            out = geoarray.predict(cube, ckpt, store=store, storage_options=so)
        after = local_cluster.run(_loads)
    finally:  # the session's cluster is shared: leave its workers' caches empty, as other tests expect
        local_cluster.run(clear_caches)
    blocks: dict[str, int] = {}
    for t in ts.data:
        if str(t["key"]).startswith("('geoarray-predict-"):
            blocks[t["worker"]] = blocks.get(t["worker"], 0) + 1
    assert sum(blocks.values()) == 4 * 4  # one task per block
    assert len(blocks) == 2, f"both workers should run blocks: {blocks}"
    loads = {w: after[w] - before[w] for w in after}
    assert all(loads[w] == 1 for w in blocks), f"loads per worker {loads}, blocks per worker {blocks}"
    assert out["mask"].attrs["geoarray_complete"] is True
