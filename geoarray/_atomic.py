"""Write-then-rename, so a failed or killed write never leaves a partial file under the final name."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it to ``path``.

    The file ends up with the mode the umask gives a new file (0644 under umask 022), whatever mode the writer
    chose: safetensors, for one, writes through a private 0600 temporary file.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        # Read the umask by creating the file (os.umask() would set it, racing other threads), then leave
        # the name free for the writer.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        tmp.unlink()
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
