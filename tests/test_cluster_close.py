"""geoarray's own LocalCluster closes in a fraction of a second, its workers exiting on their own (not killed)."""

from __future__ import annotations

import logging
import time

import psutil
import pytest

# it times a close: in the xdist worker that runs the LocalCluster tests one by one (conftest.py)
pytestmark = pytest.mark.xdist_group("processes")


def _torch_work(n):
    import torch

    with torch.no_grad():
        return float(torch.nn.Conv2d(2, 4, 3)(torch.ones(1, 2, 64, 64)).sum()) * 0 + n


def _pid():
    import os

    return os.getpid()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_cluster_close_is_fast_and_leaves_no_worker_process():
    from geoarray.distributed import cluster

    nanny_log = logging.getLogger("distributed.nanny")
    records, level = _Records(), nanny_log.level
    nanny_log.addHandler(records)
    nanny_log.setLevel(logging.INFO)
    try:
        cm = cluster(n_workers=1, gpus=False)
        client = cm.__enter__()
        assert client.gather(client.map(_torch_work, range(4))) == [0.0, 1.0, 2.0, 3.0]  # torch ran in the workers
        pids = set(client.run(_pid).values())
        assert len(pids) == 1
        t0 = time.perf_counter()
        cm.__exit__(None, None, None)
        took = time.perf_counter() - t0
    finally:
        nanny_log.removeHandler(records)
        nanny_log.setLevel(level)
    # spawn workers that had run torch took 1.2-4.3 s here (the interpreter's finalisation; past 4 s, a kill)
    assert took < 1.0, took
    assert not [m for m in records.messages if "killing" in m or "killed by signal" in m], records.messages
    gone = time.time() + 5
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.time() < gone, f"worker processes {pids} still alive after close"
        time.sleep(0.05)
