"""A worker plugin that lets geoarray's own local workers leave without the interpreter's finalisation.

A spawned worker that has run torch spends 1.5 s (2 loaded cores) to over 4 s after its last ``atexit`` handler in
the interpreter's finalisation (module teardown, native destructors), and the Nanny kills it at 4 s: every
``cluster()`` close took 1.2-4.3 s. Once the worker has closed cleanly (its plugins torn down), multiprocessing
has already joined its threads, run its finalizers and flushed its streams; the first ``atexit`` handler then
flushes the logs and ends the process with ``os._exit(0)``, as a forked multiprocessing child ends. A worker that
did not close cleanly (an error, a kill) is left alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

_closed = False


def _exit_now() -> None:
    if not _closed:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or detached stream: nothing left to flush
            pass
    os._exit(0)


class FastExit(WorkerPlugin):
    """Registered by :func:`geoarray.distributed.cluster` on the clusters it starts (never on a user's)."""

    name = "geoarray-fast-exit"

    def setup(self, worker: Any) -> None:
        atexit.register(_exit_now)  # registered last, so it runs first: after it, nothing else runs

    def teardown(self, worker: Any) -> None:
        global _closed
        _closed = True
