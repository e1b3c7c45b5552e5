"""House style gates: ruff and mypy run on the package as part of the test suite (and so in CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
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


def start_mypy() -> subprocess.Popen:
    """mypy on the package, in the background (its output in a temporary file)."""
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([_tool("mypy")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.log = out  # type: ignore[attr-defined]
    return proc


def test_mypy_clean(request):
    # a cold mypy takes ~30 s of one core; conftest starts it when the session begins (the suite leaves the
    # second core mostly idle), and here we wait for its verdict
    proc = getattr(request.config, "_geoarray_mypy", None) or start_mypy()
    request.config._geoarray_mypy = None
    rc = proc.wait(timeout=900)
    proc.log.seek(0)
    assert rc == 0, proc.log.read()
