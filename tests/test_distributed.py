from __future__ import annotations

import os
import signal
import threading
import time

import dask
import numpy as np
import pytest
import torch

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.distributed import cluster
from geoarray.errors import TrainError
from geoarray.training.config import FitConfig
from geoarray.training.ddp import run_ddp
from geoarray.training.prepare import prepare

pytestmark = pytest.mark.xdist_group("processes")  # worker processes: one xdist worker runs them (conftest.py)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=256, n_times=2, seed=0), path, chunk=64)
    return path


def _cfg(out, **kw):
    base = dict(
        task="segmentation",
        model="unet",
        model_kwargs={"width": 8, "depth": 3},
        chip_size=32,
        stride=16,
        epochs=3,
        batch_size=8,
        lr=3e-3,
        out=str(out),
        progress=False,
        seed=0,
    )
    base.update(kw)
    base.setdefault("debug_ddp", True)  # per-step weight digests, to compare ranks
    return FitConfig(**base)


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@pytest.fixture(scope="module")
def _module_cluster():
    """One LocalCluster (2 worker processes) for the module: starting one, importing torch in its workers on the
    first run and closing it cost ~10-15 s a test (its workers take the 4 s close timeout)."""
    with cluster(n_workers=2) as client:
        yield client


@pytest.fixture
def client(_module_cluster):
    """The module's cluster, made clean before each test, so one test's failure cannot leak into the next: two
    live workers, no task running or waiting on them (a stuck rank, a blocker), and no torch.distributed
    process group left in a worker; otherwise its worker processes are restarted (through their Nannies)."""
    from geoarray.training.ddp import live_workers

    c = _module_cluster
    deadline = time.time() + 120
    while len(live_workers(c)) < 2 and time.time() < deadline:  # a killed worker: its Nanny brings it back
        time.sleep(0.1)
    workers = live_workers(c)
    busy = any(c.processing().values())
    if len(workers) != 2 or busy or any(c.run(_dist_initialized).values()):
        c.restart(wait_for_workers=True)
    assert len(live_workers(c)) == 2 and not any(c.processing().values())
    assert not any(c.run(_dist_initialized).values())
    # cluster() made its client dask's default; outside the calls that take it, compute as without a cluster
    with dask.config.set(scheduler="threads"):
        yield c


@pytest.fixture
def own_client():
    """A cluster of the test's own, for the tests that kill or block workers: the shared one is not risked (its
    restarts after a kill did not always get both workers back within a minute on a loaded machine)."""
    with cluster(n_workers=2) as c, dask.config.set(scheduler="threads"):
        yield c


def test_ddp_two_ranks_keep_identical_weights_and_learn(store, tmp_path, client):
    cube = geoarray.open_cube(store)
    cfg = _cfg(tmp_path / "ddp.safetensors")
    setup = prepare(cube, cfg)
    reports = run_ddp(client, cube, cfg, setup, timeout=60)
    assert [r["rank"] for r in reports] == [0, 1]
    d0, d1 = reports[0]["digests"], reports[1]["digests"]
    assert len(d0) == 3 * reports[0]["steps_per_epoch"] and d0 == d1  # identical after every step
    hist = reports[0]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    # the ranks stream disjoint shards of whole read blocks that together cover the training windows, and
    # read no more than their own blocks each epoch
    b0, b1 = set(reports[0]["blocks"]), set(reports[1]["blocks"])
    assert b0 and b1 and not b0 & b1, f"ranks share read blocks {sorted(b0 & b1)}"
    assert b0 | b1 == {w.block for w in setup.plan.train}
    for r, blocks in ((reports[0], b0), (reports[1], b1)):
        assert 0 < r["reads"] <= cfg.epochs * len(blocks)
    # comparable to the same data in one process
    single = geoarray.fit(
        cube,
        out=str(tmp_path / "one.safetensors"),
        log_dir=str(tmp_path / "log"),
        **{k: v for k, v in vars(_cfg(tmp_path / "x")).items() if k not in ("task", "out", "log_dir", "debug_ddp")},
        task="segmentation",
    )
    one = geoarray.checkpoint.read_metadata(single)["training"]["best_metric"]
    ddp = geoarray.checkpoint.read_metadata(reports[0]["out"])["training"]["best_metric"]
    assert ddp > 0.5 * one
    ck = geoarray.load_checkpoint(reports[0]["out"])
    assert ck.meta["training"]["world_size"] == 2


def test_fit_with_client_returns_rank0_checkpoint(store, tmp_path, client):
    with client.as_current(), dask.config.set(scheduler=client.get):  # inside `with cluster() as client:`
        out = geoarray.fit(
            geoarray.open_cube(store),
            task="segmentation",
            client=client,
            model="unet",
            model_kwargs={"width": 4, "depth": 3},
            chip_size=32,
            epochs=1,
            batch_size=8,
            out=str(tmp_path / "c.safetensors"),
            progress=False,
        )
    assert out.exists() and geoarray.load_checkpoint(out).meta["training"]["world_size"] == 2


def test_worker_death_is_a_clear_error_not_a_hang(store, tmp_path, own_client):
    client = own_client
    cube = geoarray.open_cube(store)
    cfg = _cfg(tmp_path / "dead.safetensors", epochs=50)
    setup = prepare(cube, cfg)
    pids = client.run(os.getpid)
    victim = pids[sorted(pids)[1]]

    def kill_soon():
        time.sleep(4.0)
        os.kill(victim, signal.SIGKILL)

    threading.Thread(target=kill_soon, daemon=True).start()
    t0 = time.time()
    with pytest.raises(TrainError, match=r"died (during|before) DDP training|failed"):
        run_ddp(client, cube, cfg, setup, timeout=30)
    assert time.time() - t0 < 60


def test_a_failed_run_frees_its_workers_for_the_next(store, tmp_path, own_client):
    client = own_client
    """A rank that never starts leaves the other one blocked in init_process_group, holding its worker's only
    thread (cancelling a running task does not stop it), and a failed init leaves torch.distributed state in
    its process: both made later runs on the same cluster hang. A failed run now restarts its workers."""
    cube = geoarray.open_cube(store)
    cfg = _cfg(tmp_path / "r.safetensors", epochs=1)
    setup = prepare(cube, cfg)
    busy = sorted(client.scheduler_info()["workers"])[1]
    blocker = client.submit(time.sleep, 600, workers=[busy], pure=False)  # rank 1 cannot start
    while blocker.status == "pending" and not client.processing()[busy]:
        time.sleep(0.1)
    # rank 0 gives up waiting for rank 1 (gloo's store timeout), or run_ddp sees rank 1 never started
    with pytest.raises(TrainError, match=r"rank\(s\) \[1\] did not start|rank 0 .* failed"):
        run_ddp(client, cube, cfg, setup, timeout=5)
    t0 = time.time()
    reports = run_ddp(client, cube, cfg, setup, timeout=60)
    assert [r["rank"] for r in reports] == [0, 1] and time.time() - t0 < 60


def test_repeated_runs_on_one_cluster(store, tmp_path, client):
    """Session 1's flaky hang: a rank's worker thread stuck at the end of a run, in ~ProcessGroupGloo joining
    threads that waited on a peer which had left (the DDP Reducer freed the group after
    destroy_process_group). Ranks now free DDP and meet at a barrier before tearing down."""
    cube = geoarray.open_cube(store)
    setup = prepare(cube, _cfg(tmp_path / "r.safetensors", epochs=1, steps_per_epoch=2))  # the same for every run
    for i in range(4):
        cfg = _cfg(tmp_path / f"r{i}.safetensors", epochs=1, steps_per_epoch=2)
        reports = run_ddp(client, cube, cfg, setup, timeout=60)
        assert [r["rank"] for r in reports] == [0, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cluster_uses_cuda_workers_when_available():
    with cluster(gpus=True) as client:
        on_workers = client.run(lambda: __import__("torch").cuda.is_available())
    assert on_workers and all(on_workers.values()), on_workers


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks workers without a GPU")
def test_cuda_on_workers_without_a_gpu_is_a_device_error(store, tmp_path, client):
    """device='cuda' on a cluster whose workers have no GPU: fit refuses before any rank starts, naming the
    workers (the backend was chosen from worker 0 alone, and the ranks failed one by one); predict's tasks check
    the device on their worker, as device='auto' did (they failed loading the checkpoint, a CheckpointError)."""
    from geoarray.errors import PredictError
    from geoarray.models import create_model

    cube = geoarray.open_cube(store)
    cfg = _cfg(tmp_path / "c.safetensors", device="cuda", epochs=1)
    with pytest.raises(TrainError, match=r"device='cuda', but worker\(s\) \['tcp://.*'\] see no CUDA GPU"):
        run_ddp(client, cube, cfg, prepare(cube, cfg), timeout=60)
    bands = [str(b) for b in cube.band.values]
    model = create_model("unet", in_channels=len(bands), num_classes=2, width=4, depth=2)
    ck = geoarray.save_checkpoint(tmp_path / "m.safetensors", model, task="segmentation", bands=bands)
    mask = geoarray.predict(cube.isel(y=slice(0, 64), x=slice(0, 64)), ck, device="cuda")["mask"]
    with pytest.raises(PredictError, match=r"device='cuda', but torch sees no CUDA GPU here"):
        client.compute(mask.data).result()


def test_vicreg_under_ddp_takes_variance_and_covariance_over_the_gathered_batch(client):
    """Two gloo ranks on LocalCluster worker processes each hold two rows whose local stds are below 1 (so a
    local variance term would be about 0.4) but whose global stds over all four rows are above 2: the variance term is 0
    on both ranks, the covariance term is the global batch's, and the gradients are those of the loss on the
    concatenated batch (DDP's mean over ranks of each rank's gradient), so the ranks train one global batch."""
    import socket

    from geoarray.tasks.vicreg import vicreg_loss

    def rank_fn(rank, world, port, z1, z2, rows_even, rows_1_3, rows_0_4):
        import torch.distributed as dist

        from geoarray.tasks.vicreg import VICRegTask

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        out = []
        try:
            for task, rows in (
                (VICRegTask(), rows_even),
                (VICRegTask(sim_coeff=0), rows_1_3),
                (VICRegTask(sim_coeff=0), rows_0_4),
            ):
                a, b = (
                    z1[rows[rank]].clone().requires_grad_(True),
                    z2[rows[rank]].clone().requires_grad_(True),
                )
                loss, terms = task.objective(a, b, gather=True)
                loss.backward()
                out.append(({k: float(v) for k, v in terms.items()}, a.grad, b.grad))
            # the training views: both ranks' global generators are seeded alike, yet their views differ
            from geoarray.chips import Batch
            from geoarray.models import create_model

            class Recorder(VICRegTask):
                def views(self, batch, generator=None):
                    out.append(float(torch.rand(1, generator=generator)))
                    return super().views(batch, generator)

            task = Recorder(projector_dim=8)
            torch.manual_seed(0)
            net = task.train_module(create_model("resnet18", in_channels=2, num_classes=0, width=4))
            chips = torch.randn(4, 2, 32, 32, generator=torch.Generator().manual_seed(0))
            task.training_loss(net, Batch(chips, None))
            out.append(task._sums["vic_covariance"])  # of the gathered views: the same on both ranks
            return out
        finally:
            dist.destroy_process_group()

    z1 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [4.0, 5.0], [5.0, 4.0]], dtype=torch.float64)
    z2 = z1 + torch.tensor([[0.1, -0.2], [0.0, 0.3], [-0.1, 0.0], [0.2, 0.1]], dtype=torch.float64)
    # each rank's rows: two each; then uneven shares (1 and 3, 0 and 4), which the gather pads and trims
    splits = ([[0, 1], [2, 3]], [[0], [1, 2, 3]], [[], [0, 1, 2, 3]])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = sorted(client.scheduler_info()["workers"])
    futures = [
        client.submit(rank_fn, r, 2, port, z1, z2, *splits, workers=[w], pure=False)
        for r, w in enumerate(workers)
    ]
    res0, res1 = client.gather(futures)
    (t0, ga0, gb0), (t1, ga1, gb1) = res0[0], res1[0]
    _, local = vicreg_loss(z1[:2], z2[:2])
    assert local["vic_variance"].item() > 0.3  # what rank 0 alone would see (its stds are 0.35..0.71)
    # over all four rows every std is >= 2.3, so the hinge is 0; covariance by hand: C(z1) of rows (0,1), (1,0),
    # (4,5), (5,4): deviations (-2.5,-1.5), (-1.5,-2.5), (1.5,2.5), (2.5,1.5) -> C01 = (3.75 x 2 + 3.75 x 2) / 3 = 5
    assert t0["vic_variance"] == t1["vic_variance"] == 0.0
    cz2 = np.cov(z2.numpy(), rowvar=False)[0, 1]
    assert t0["vic_covariance"] == pytest.approx((2 * 5.0**2 + 2 * cz2**2) / 2, rel=1e-9)
    assert t1["vic_covariance"] == pytest.approx(t0["vic_covariance"], rel=1e-12)
    # gradients: the loss on the concatenation, in one process
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    whole, _ = vicreg_loss(a, b)
    whole.backward()
    torch.testing.assert_close(torch.cat([ga0, ga1]) / 2, a.grad)  # DDP averages the ranks' gradients
    torch.testing.assert_close(torch.cat([gb0, gb1]) / 2, b.grad)
    assert res0[3] != res1[3] and res0[4] == pytest.approx(res1[4], rel=1e-6)  # own views, global terms
    # uneven shares: the gathered terms, and their gradients, are still those of the four rows together
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    whole, want = vicreg_loss(a, b, sim_coeff=0.0)
    whole.backward()
    for k in (1, 2):
        (u0, ua0, ub0), (u1, ua1, ub1) = res0[k], res1[k]
        for t in (u0, u1):
            assert t["vic_covariance"] == pytest.approx(want["vic_covariance"].item(), rel=1e-12)
            assert t["vic_variance"] == 0.0
        torch.testing.assert_close(torch.cat([ua0, ua1]) / 2, a.grad)
        torch.testing.assert_close(torch.cat([ub0, ub1]) / 2, b.grad)


def test_vicreg_fit_on_two_ddp_ranks_learns_with_identical_weights(store, tmp_path, client):
    cube = geoarray.open_cube(store)
    cfg = _cfg(
        tmp_path / "vic.safetensors",
        task="vicreg",
        model="resnet18",
        model_kwargs={"width": 8},
        task_kwargs={"projector_dim": 64},
        stride=16,
        batch_size=16,
        lr=1e-2,
        epochs=4,
        steps_per_epoch=3,
    )
    setup = prepare(cube, cfg)
    reports = run_ddp(client, cube, cfg, setup, timeout=120)
    d0, d1 = reports[0]["digests"], reports[1]["digests"]
    assert len(d0) == 12 and d0 == d1  # the gathered terms' gradients keep the ranks in step
    hist = reports[0]["history"]
    print([(h["train_loss"], h["vic_variance"], h["effective_rank"]) for h in hist])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 1.0  # about 22 at the start
    assert hist[-1]["effective_rank"] > 2
    meta = geoarray.checkpoint.read_metadata(reports[0]["out"])
    assert meta["task"] == "vicreg" and meta["training"]["world_size"] == 2


def test_the_ddp_worker_check_never_misses_a_live_worker(client):
    """client.scheduler_info() returns the client's cache, which its periodic refresh replaces with an identity
    without workers: run_ddp then now and then saw every worker "die" in a healthy run (a flaky 'died during
    DDP training'). The check asks the scheduler; with the refresh every 1 ms it still sees both workers."""
    from geoarray.training.ddp import live_workers

    with dask.config.set({"distributed.client.scheduler-info-interval": "1ms"}):
        with cluster(client.scheduler.address) as fresh:  # a new client reads the interval: the module's cluster
            seen = [len(live_workers(fresh)) for _ in range(300)]
    assert seen == [2] * 300
