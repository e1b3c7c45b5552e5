"""DDP training with one rank per Dask worker: ``fit(..., client=client)``.

One DistributedDataParallel rank runs per worker (nccl on GPU, gloo on CPU); each rank streams its own shard
of read blocks from the shared store, and rank 0 validates and writes the checkpoint. Get a client from
:func:`geoarray.distributed.cluster` or any ``distributed.Client``.
"""

from __future__ import annotations

import datetime
import gc
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import xarray as xr

from geoarray._devices import cuda_count
from geoarray.errors import TrainError
from geoarray.training.config import FitConfig
from geoarray.training.loop import Trainer
from geoarray.training.prepare import Setup

__all__ = ["fit_ddp", "init_kwargs", "rank_gpus", "run_ddp"]

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _host_of(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


class _Lazy:
    """Carries a lazy cube into a task untouched.

    ``client.submit`` computes every dask collection it finds in its arguments and ships the values (and a
    rank holding a worker's only thread can then wait forever for a chunk task queued on that worker). A cube
    must reach each rank as its lazy graph, so the rank reads only its own shard from the store. Dask does not
    look inside arbitrary objects, so wrapping is enough.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


def _rank_main(
    rank: int,
    world: int,
    master: str,
    port: int,
    backend: str,
    lazy: _Lazy,
    cfg: FitConfig,
    setup: Setup,
    timeout: float,
    gpu: int | None = None,
) -> dict[str, Any]:
    """One DDP rank, inside a Dask worker; ``gpu`` is the CUDA device index it trains on (nccl), from
    :func:`rank_gpus`."""
    cube = lazy.value
    import torch
    import torch.distributed as dist
    from distributed import get_worker
    from torch.nn.parallel import DistributedDataParallel

    # ranks run only in Dask workers, where the process is the worker's: keep torch to its thread budget
    torch.set_num_threads(max(1, get_worker().state.nthreads))
    if backend == "nccl":
        assert gpu is not None  # run_ddp gives every nccl rank its device
        torch.cuda.set_device(gpu)  # before init: nccl's communicator and barrier() use the current device
        cfg.device = f"cuda:{gpu}"
    elif cfg.device == "auto":
        cfg.device = "cpu"
    dist.init_process_group(**init_kwargs(backend, master, port, rank, world, timeout, gpu))
    try:
        trainer = Trainer(cube, cfg, setup, rank=rank, world=world)
        # on the rank's device: nccl has no CPU tensors (its only device type is cuda)
        steps = torch.tensor([trainer.steps_per_epoch], device=trainer.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)  # every rank must run the same number of steps
        trainer.steps_per_epoch = int(steps.item())
        ids = [gpu] if backend == "nccl" else None
        trainer.ddp_model = DistributedDataParallel(trainer.net, device_ids=ids)
        out = trainer.run()
        report = {
            "rank": rank,
            "out": str(out),
            "digests": trainer.weight_digests,
            "history": trainer.history,
            "steps_per_epoch": trainer.steps_per_epoch,
            "reads": trainer.train_stream.reads,
            "blocks": sorted({w.block for w in trainer.train_stream.windows}),  # this rank's shard
        }
        # Tear down in a safe order. DDP's Reducer holds the process group; freed after
        # destroy_process_group (when this frame's locals go), ~ProcessGroupGloo joined gloo threads that
        # waited on a peer which had already left, and the worker thread hung there (seen with py-spy on the
        # 5th of a loop of runs). Free it while every rank is still connected, then meet at a barrier.
        trainer.ddp_model = None
        del trainer
        gc.collect()
        dist.barrier()
        return report
    finally:
        dist.destroy_process_group()


def init_kwargs(
    backend: str, master: str, port: int, rank: int, world: int, timeout: float, gpu: int | None
) -> dict[str, Any]:
    """The arguments of ``torch.distributed.init_process_group`` for one rank. Under nccl the rank's device is
    bound (``device_id``): the communicator forms at once (an NCCL error shows here, not in the first
    collective) and ``barrier()`` runs on that device rather than a guessed one."""
    import torch

    kw: dict[str, Any] = {
        "backend": backend,
        "init_method": f"tcp://{master}:{port}",
        "rank": rank,
        "world_size": world,
        "timeout": datetime.timedelta(seconds=timeout),
    }
    if backend == "nccl":
        if gpu is None:
            raise ValueError("an nccl rank needs its CUDA device index")
        kw["device_id"] = torch.device("cuda", gpu)
    return kw


def gpu_info() -> tuple[str, str | None, int]:
    """This worker's host name, its ``CUDA_VISIBLE_DEVICES`` and the CUDA devices torch sees (run on workers)."""
    import os

    return socket.gethostname(), os.environ.get("CUDA_VISIBLE_DEVICES"), cuda_count()


def rank_gpus(infos: list[tuple[str, str | None, int]]) -> list[int]:
    """The CUDA device index each rank trains on, from each rank's worker's :func:`gpu_info`, in rank order.

    NCCL needs every rank on its own GPU. A worker takes the first device in its own list that no earlier rank
    on its host has taken: under dask-cuda (``LocalCUDACluster``, ``dask cuda worker``) each worker's
    ``CUDA_VISIBLE_DEVICES`` lists its own GPU first (worker i sees ``"i,i+1,...,0,..."``), so every rank takes
    ``cuda:0`` (never ``cuda:{rank}``: rank order is not dask-cuda's worker order); workers of one host that see
    the same devices in the same order (a plain LocalCluster, a Slurm job's one ``CUDA_VISIBLE_DEVICES``) take
    one each in rank order, as torchrun's ``LOCAL_RANK`` does. Devices are compared by their
    ``CUDA_VISIBLE_DEVICES`` entries (physical indices or UUIDs), or by index where it is unset.
    """
    taken: dict[str, set[str]] = {}
    out = []
    for rank, (host, visible, count) in enumerate(infos):
        ids = [v.strip() for v in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
        used = taken.setdefault(host, set())
        free = [i for i, d in enumerate(ids) if d not in used]
        if not free:
            on_host = sum(1 for h, _, _ in infos if h == host)
            raise TrainError(
                f"DDP over nccl needs one GPU per rank, but host {host!r} runs {on_host} ranks and rank {rank} "
                f"finds none of its {count} visible GPU(s) ({visible or 'all'}) free. Start one worker per GPU "
                "(geoarray.distributed.cluster() or dask-cuda's LocalCUDACluster do), or pass device='cpu'."
            )
        used.add(ids[free[0]])
        out.append(free[0])
    return out


def _check_shards(cfg: FitConfig, setup: Setup, world: int) -> None:
    """Every rank needs a full batch (DDP drops the last partial one): refuse before any rank starts."""
    from geoarray.training.loop import shard_windows

    if world < 2:  # one rank keeps its last partial batch
        return
    per = cfg.pixels_per_chip if setup.stream_kind == "pixels" else 1
    n = min(len(shard_windows(setup.plan.train, r, world)) * per for r in range(world))
    if n < cfg.batch_size:
        raise TrainError(
            f"{len(setup.plan.train)} training chips shared by {world} DDP ranks leave a rank {n} samples, less "
            f"than one batch (batch_size={cfg.batch_size}); expected at least batch_size per rank. Lower "
            "batch_size, use fewer workers, or a smaller stride/chip_size for more chips."
        )


def live_workers(client: Any) -> list[str]:
    """The addresses of the cluster's workers, asked of the scheduler.

    Not ``client.scheduler_info()["workers"]``: that returns the client's cached identity, which the client's
    periodic refresh (every ``distributed.client.scheduler-info-interval``) replaces with one *without* workers,
    so now and then it lists none, and a healthy DDP run was stopped as if every worker had died.
    """
    return sorted(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def _task_states(dask_scheduler: Any, keys: list[str]) -> list[str]:
    return [dask_scheduler.tasks[k].state if k in dask_scheduler.tasks else "forgotten" for k in keys]


def _ask(client: Any, fn: Any, workers: list[str]) -> dict[str, Any]:
    """``client.run(fn)`` on ``workers``; a worker lost meanwhile is a TrainError, as during training."""
    try:
        return client.run(fn, workers=workers)
    except OSError as e:  # distributed's CommClosedError: the worker's connection closed under the call
        lost = sorted(set(workers) - set(live_workers(client)))
        raise TrainError(
            f"Dask worker(s) {lost or workers} died before DDP training started ({type(e).__name__}); no rank "
            "ran. Check the workers' memory limits and logs, then run again."
        ) from None


def run_ddp(
    client: Any, cube: xr.Dataset, cfg: FitConfig, setup: Setup, *, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Run DDP with one rank per worker of ``client``; returns each rank's report (rank order).

    A worker that dies, or a rank that fails, stops the run with a :class:`TrainError` naming it, instead of
    leaving the other ranks waiting.
    """
    workers = live_workers(client)
    if not workers:
        raise TrainError("the Dask cluster has no workers; start some (e.g. geoarray.distributed.cluster()).")
    world = len(workers)
    _check_shards(cfg, setup, world)
    seen = _ask(client, gpu_info, workers)
    infos = [(str(h), v, int(n)) for h, v, n in (seen[w] for w in workers)]
    no_gpu = [w for w, (_, _, n) in zip(workers, infos, strict=True) if n == 0]
    if cfg.device == "cuda" and no_gpu:
        raise TrainError(
            f"device='cuda', but worker(s) {no_gpu} see no CUDA GPU; expected a GPU on every worker (one DDP "
            "rank per worker). Use a GPU cluster (geoarray.distributed.cluster() on a GPU machine, dask-cuda), "
            "or device='auto' / 'cpu'."
        )
    gpu = not no_gpu and cfg.device in ("auto", "cuda")
    backend = "nccl" if gpu else "gloo"
    gpus: list[int | None] = [*rank_gpus(infos)] if gpu else [None] * world
    master = _host_of(workers[0])
    port = _ask(client, _free_port, [workers[0]])[workers[0]]
    # unique keys: a key reused from an earlier run would hand back that run's finished rank, and the new ranks
    # would wait for it forever
    run_id = uuid.uuid4().hex
    log.info("DDP: %d ranks (%s) on %s", world, backend, ", ".join(workers))
    futures = [
        client.submit(
            _rank_main,
            rank,
            world,
            master,
            port,
            backend,
            _Lazy(cube),
            cfg,
            setup,
            timeout,
            gpus[rank],
            workers=[w],
            allow_other_workers=False,
            pure=False,
            retries=0,
            key=f"geoarray-ddp-{run_id}-rank{rank}",
        )
        for rank, w in enumerate(workers)
    ]
    t_submit, started = time.monotonic(), False
    first_done: float | None = None
    try:
        while True:
            done = [f for f in futures if f.done()]
            pending = [f for f in futures if not f.done()]
            for f in done:
                if f.status == "error":
                    rank = futures.index(f)
                    exc = f.exception()
                    if isinstance(exc, TrainError):
                        raise exc
                    raise TrainError(
                        f"DDP rank {rank} on {workers[rank]} failed: {type(exc).__name__}: {exc}"
                    )
            if not pending:
                break
            if done and first_done is None:
                first_done = time.monotonic()
            if first_done is not None and time.monotonic() - first_done > timeout:
                late = [futures.index(f) for f in pending]
                raise TrainError(
                    f"DDP rank(s) {late} did not finish within {timeout:.0f} s of the others (stuck in torch "
                    "distributed teardown or a collective); their workers are being restarted. Run again "
                    "(resume= continues from the last epoch)."
                )
            if not started and time.monotonic() - t_submit > timeout:
                states = client.run_on_scheduler(_task_states, keys=[f.key for f in futures])
                waiting = [r for r, st in enumerate(states) if st not in ("processing", "memory", "erred")]
                if waiting:
                    raise TrainError(
                        f"DDP rank(s) {waiting} did not start within {timeout:.0f} s (task states {states}); the "
                        "other ranks would wait forever. Check that every worker is free, or restart the cluster."
                    )
                started = True
            alive = set(live_workers(client))
            lost = [w for w in workers if w not in alive]
            if lost:
                raise TrainError(
                    f"Dask worker(s) {lost} died during DDP training; the other ranks were stopped. "
                    "Check the workers' memory limits and logs, then run again (resume= continues from the "
                    "last epoch)."
                )
            time.sleep(0.2)
        return [f.result() for f in futures]
    except BaseException:
        # Restart only what must be: workers whose rank is still running (cancel() does not stop a running
        # task), and workers whose rank failed with something other than a TrainError (e.g. inside
        # init_process_group, which leaves torch.distributed state behind). A TrainError is raised by geoarray
        # after init, and the rank's `finally` destroyed its group cleanly; restarting would also drop data
        # the user persisted on those workers.
        dirty = []
        for f, w in zip(futures, workers, strict=True):
            if not f.done():
                f.cancel()
                dirty.append(w)
            elif f.status == "error" and not isinstance(f.exception(), TrainError):
                dirty.append(w)
        try:
            alive = set(live_workers(client))
        except (OSError, RuntimeError, TimeoutError) as e:  # a broken client: keep the original error
            log.warning("could not list the cluster's workers after the DDP failure (%s)", e)
            alive = set()
        if dirty and alive:
            _free_workers(client, [w for w in dirty if w in alive])
        raise


def _free_workers(client: Any, workers: list[str]) -> None:
    """Restart the workers of a failed DDP run, so the next run gets clean processes.

    Cancelling a future does not stop a task that is executing: a surviving rank stays blocked in a gloo/nccl
    collective, waiting for the rank that failed, and holds its worker's only thread until the collective times
    out, so the next run's rank for that worker cannot start. A rank whose init failed also leaves
    torch.distributed state behind in its process, and the next run's ranks then wait for each other forever.
    Restarting the worker processes (through their Nannies) clears both.
    """
    if not workers:
        return
    log.warning("DDP failed; restarting worker(s) %s for a clean next run", workers)
    try:
        client.restart_workers(workers=workers, timeout=60, raise_for_error=False)
    except Exception as e:  # no Nanny (processes=False) or the worker is gone already
        log.warning("could not restart %s (%s); they are busy until the DDP timeout", workers, e)


def fit_ddp(client: Any, cube: xr.Dataset, cfg: FitConfig, setup: Setup) -> Path | str:
    """``fit(..., client=client)``: DDP training; returns rank 0's best checkpoint (a path, or its URL)."""
    from geoarray._storage import is_url

    reports = run_ddp(client, cube, cfg, setup)
    out = reports[0]["out"]
    return out if is_url(out) else Path(out)
