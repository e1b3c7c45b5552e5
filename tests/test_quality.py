"""House style gates: ruff and mypy run on the package as part of the test suite (and so in CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return found


def test_ruff_clean():
    r = subprocess.run(
        [_tool("ruff"), "check", "geoarray", "tests", "examples", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def start_mypy(verdict_dir: Path | None = None) -> subprocess.Popen:
    """mypy on the package, in the background (its output in a temporary file).

    With ``verdict_dir`` (xdist's controller runs it for its workers), the output goes to ``verdict_dir/log`` and
    the exit code to ``verdict_dir/rc`` once mypy ends, where :func:`test_mypy_clean` on any worker reads them.
    """
    if verdict_dir is None:
        out = tempfile.TemporaryFile(mode="w+")
    else:
        out = open(verdict_dir / "log", "w+")  # closed by the thread below
    proc = subprocess.Popen([_tool("mypy")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.log = out  # type: ignore[attr-defined]
    if verdict_dir is not None:

        def verdict() -> None:
            rc = proc.wait()
            out.close()
            (verdict_dir / "rc.part").write_text(str(rc))
            os.replace(verdict_dir / "rc.part", verdict_dir / "rc")

        threading.Thread(target=verdict, daemon=True).start()
    return proc


def _wait_for_controllers_mypy(folder: Path, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not (folder / "rc").exists():
        assert time.monotonic() < deadline, f"mypy gave no verdict in {timeout} s"
        time.sleep(0.5)
    return int((folder / "rc").read_text()), (folder / "log").read_text()


def test_mypy_clean(request):
    # a cold mypy takes ~30 s of one core; conftest starts it when the session begins (under xdist, once, in the
    # controller), and here we wait for its verdict
    shared = getattr(request.config, "workerinput", {}).get("geoarray_xdist_dir")
    if shared and (Path(shared) / "log").exists():
        rc, log = _wait_for_controllers_mypy(Path(shared), timeout=900)
        assert rc == 0, log
        return
    proc = getattr(request.config, "_geoarray_mypy", None) or start_mypy()
    request.config._geoarray_mypy = None
    rc = proc.wait(timeout=900)
    proc.log.seek(0)
    assert rc == 0, proc.log.read()
