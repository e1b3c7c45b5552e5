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


def check_file_path(
    path: str | os.PathLike[str], what: str, suffixes: tuple[str, ...] = (), *, example: str = ""
) -> None:
    """Refuse, before any work, an output path that :func:`atomic_write` would fail on only at the end.

    A directory (``os.replace`` onto it is an IsADirectoryError), a path under a file, or, when ``suffixes``
    are given, another suffix (compared case-insensitively: a GeoTIFF named ``.png`` misleads its readers).
    """
    import re

    from geoarray.errors import OutputPathError

    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):/", str(path))  # pathlib makes s3://b/k 's3:/b/k'; C:/ is a drive
    if scheme and scheme.group(1).lower() != "file":
        raise OutputPathError(
            f"{str(path)!r} is a URL; {what} is written to a local file only (here it would be the local folder "
            f"'{scheme.group(1)}:'). Write it locally, then upload it (e.g. `aws s3 cp out.tif s3://bucket/` or "
            "fsspec's `fs.put`)."
        )
    out = Path(path)
    if out.is_dir():
        raise OutputPathError(
            f"{str(out)!r} is a directory; expected the path of {what} file to write, e.g. "
            f"{str(out / (example or 'out' + (suffixes or ('',))[0]))!r}."
        )
    under = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if under is not None:
        raise OutputPathError(
            f"{str(out)!r} lies under {str(under)!r}, which is a file; choose another path."
        )
    if suffixes and out.suffix.lower() not in suffixes:
        ends = f"ends {out.suffix!r}" if out.suffix else "has no suffix"
        raise OutputPathError(
            f"{str(out)!r} {ends}, but {what} file is written there; expected a name ending "
            f"{' or '.join(suffixes)}, e.g. {str(out.with_suffix(suffixes[0]))!r}."
        )
