"""Processes geoarray owns keep the memory torch frees (geoarray._heap): the ``geoarray`` command and the
workers of the LocalCluster geoarray starts. The user's own process is left alone.

The probe: allocate 64 MB (over glibc's largest mmap threshold, as a UNet's feature maps are), free it, and
count the page faults of allocating it again, in the steady state. glibc's defaults unmap the block on free, so the kernel zeroes
16k fresh pages; kept, the heap hands the same pages back.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings"),
    pytest.mark.xdist_group("processes"),  # starts a LocalCluster: in the xdist worker that runs them all (conftest.py)
]

PROBE = """
import resource
import torch  # numpy asks for huge pages on large arrays (few faults either way); torch's CPU allocator does not

def refaults():
    a = torch.ones(16_000_000)  # 64 MB
    del a
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16_000_000)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

def steady():  # the heap settles after a few passes (where the block lands among the small ones)
    return min(refaults() for _ in range(8))
"""


def _plain_environ() -> dict[str, str]:
    """This process's environment without glibc's malloc variables (a cluster's Nanny, dask's own included,
    leaves its pre-spawn variables in the environment of the process that started it)."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


def _run(code: str, env: dict[str, str] | None = None) -> int:

    out = subprocess.run(
        [sys.executable, "-c", PROBE + code], capture_output=True, text=True, timeout=120,
        env={**_plain_environ(), **(env or {})},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_the_geoarray_command_keeps_freed_memory(tmp_path):
    cli = f"""
from geoarray.cli import app
try:
    app(["info", {str(tmp_path / "none.zarr")!r}], standalone_mode=False)  # any command: the app's callback runs
except BaseException:
    pass
print(steady())
"""
    assert _run(cli) < 500  # the geoarray command's process: the same pages again
    assert _run(cli, {"GEOARRAY_KEEP_FREED": "0"}) > 10_000  # the opt-out: glibc's defaults, 16k fresh pages


def test_geoarrays_local_cluster_workers_keep_freed_memory():
    code = """
import geoarray.distributed
with geoarray.distributed.cluster(n_workers=1, gpus=False) as client:
    kept = list(client.run(steady).values())[0]
import os
print(int("MALLOC_ARENA_MAX" in os.environ))  # after the cluster, the client's environment is as it was
print(steady())  # and its own process is left alone
print(kept)
"""
    out = subprocess.run(
        [sys.executable, "-c", PROBE + code], capture_output=True, text=True, timeout=180, env=_plain_environ()
    )
    assert out.returncode == 0, out.stderr
    leaked, here, worker = (int(v) for v in out.stdout.split()[-3:])
    assert here > 10_000 and worker < 500 and not leaked, (here, worker, leaked)
