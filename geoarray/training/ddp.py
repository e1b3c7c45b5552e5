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

__all__ = ["fit_ddp", "run_ddp"]

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
) -> dict[str, Any]:
    """One DDP rank, inside a Dask worker."""
    cube = lazy.value
    import torch
    import torch.distributed as dist
    from distributed import get_worker
    from torch.nn.parallel import DistributedDataParallel

    # ranks run only in Dask workers, where the process is the worker's: keep torch to its thread budget
    torch.set_num_threads(max(1, get_worker().state.nthreads))
    dist.init_process_group(
        backend,
        init_method=f"tcp://{master}:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
            cfg.device = f"cuda:{torch.cuda.current_device()}"
        elif cfg.device == "auto":
            cfg.device = "cpu"
        trainer = Trainer(cube, cfg, setup, rank=rank, world=world)
        steps = torch.tensor([trainer.steps_per_epoch])
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)  # every rank must run the same number of steps
        trainer.steps_per_epoch = int(steps.item())
        ids = [trainer.model.parameters().__next__().device.index] if backend == "nccl" else None
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
    gpu = client.run(cuda_count, workers=[workers[0]])[workers[0]] > 0 and cfg.device in ("auto", "cuda")
    backend = "nccl" if gpu else "gloo"
    master = _host_of(workers[0])
    port = client.run(_free_port, workers=[workers[0]])[workers[0]]
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
