"""Where a run's files go: the checkpoint ``out``, its resume side file, and ``log_dir`` (metrics.csv, a task's
pictures), on a local path or in object storage (an fsspec URL such as ``s3://bucket/run/model.safetensors``).

Local paths are written in place, each file through a rename (:mod:`geoarray._atomic`). For a URL the run writes
into a local working folder exactly as it would locally, and :meth:`RunFiles.publish` uploads every file that
changed with one fsspec ``put`` after each epoch's saves. Object stores have no rename, but they make an object
visible whole (one PUT, or a multipart upload that appears when it completes): a reader never sees half a
checkpoint, and what is in the bucket is always the last published epoch's files. ``resume=`` a URL downloads the
checkpoint and its side file first. Under DDP every rank works in its own folder; only rank 0 publishes.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any

from geoarray._storage import Location, is_url, location
from geoarray.errors import GeoArrayError, TrainError
from geoarray.training.config import FitConfig

__all__ = ["MetricsLog", "RunFiles", "check_remote_paths"]

log = logging.getLogger(__name__)

SIDE = ".train-state.safetensors"  # the resume side file's suffix (training.state.state_path)
_URL_KEYS = ("out", "resume", "log_dir")


def check_remote_paths(cfg: FitConfig) -> set[str]:
    """Refuse, before any work, ``storage_options`` without a URL and URLs that fit could not use: a missing or
    unwritable bucket (a tiny marker object is written and deleted), an ``out`` that is a prefix, a ``log_dir``
    that is an object, a ``resume`` that is not there. Returns the keys among out/resume/log_dir that are URLs."""
    so = cfg.storage_options
    if so is not None and not isinstance(so, dict):
        raise TrainError(
            f"storage_options={so!r}; expected a dict of fsspec options such as {{'key': ..., 'secret': ..., "
            "'client_kwargs': {'endpoint_url': ...}}, or None."
        )
    urls = {k for k in _URL_KEYS if getattr(cfg, k) is not None and is_url(str(getattr(cfg, k)))}
    init_url = cfg.init is not None and is_url(str(cfg.init))  # read with the same options (protocols)
    if so and not urls and not init_url:
        raise TrainError(
            "storage_options were given, but out, resume and log_dir are local paths, and so is init; they apply "
            "to URLs only (out='s3://bucket/model.safetensors', ...). Drop storage_options, or pass the URL."
        )
    for key in sorted(urls, key=_URL_KEYS.index):
        url = str(getattr(cfg, key))
        try:
            loc = location(url, so)
            if key == "resume":
                if not loc.isfile():
                    raise TrainError(
                        f"resume={url!r}: no such object; expected the checkpoint of an earlier run (its side "
                        f"file {url + SIDE!r}, if there, restores the optimizer too). Check the URL and "
                        "storage_options."
                    )
                continue
            bucket_only = "/" not in loc.path.strip("/")
            if not (key == "out" and bucket_only):
                _probe_write(loc, key)
            if key == "out" and (bucket_only or loc.isdir()):
                raise TrainError(
                    f"out={url!r} is a bucket or a prefix (a folder); expected the URL of a checkpoint object, "
                    f"e.g. {url.rstrip('/') + '/model.safetensors'!r}."
                )
            if key == "log_dir" and loc.isfile():
                raise TrainError(f"log_dir={url!r} is an object (a file); expected a prefix (folder) for metrics.csv.")
        except GeoArrayError as e:
            if isinstance(e, TrainError):
                raise
            raise TrainError(f"{key}={url!r}: {e}") from None
    return urls


def _probe_write(loc: Location, key: str) -> None:
    """Write and delete a marker object where the run will write: a bucket that refuses writes fails now."""
    name = f".geoarray-write-check-{uuid.uuid4().hex}"
    marker = loc.path + (name if key == "out" else "/" + name)
    what = "checkpoint" if key == "out" else "metrics"
    try:
        loc.fs.pipe_file(marker, b"")
        loc.fs.rm_file(marker)
    except FileNotFoundError:  # s3fs: NoSuchBucket (a missing bucket does not "exist" on a dead endpoint either)
        bucket = loc.path.lstrip("/").split("/", 1)[0]
        raise TrainError(
            f"{key}={loc.url!r}: the bucket {bucket!r} does not exist (or these credentials cannot see it); "
            f"expected an existing bucket for the {what}. Create it first, or check the URL and storage_options."
        ) from None
    except Exception as e:  # botocore/aiohttp/gcsfs raise many types for "cannot reach" and "denied"
        raise TrainError(
            f"{key}={loc.url!r} cannot be written ({type(e).__name__}: {e}); fit uploads its {what} there after "
            "every epoch. Expected a bucket these credentials may write to: check the URL, the endpoint and "
            "credentials in storage_options, and the bucket's permissions."
        ) from None


class RunFiles:
    """One rank's view of the run's files: :attr:`cfg` with local paths, and the uploads to do after saves.

    With no URL among out/resume/log_dir it changes nothing (``cfg`` is the run's own) and :meth:`publish` is a
    no-op. ``rank`` > 0 only reads (``resume``): its working folder is never uploaded.
    """

    def __init__(self, cfg: FitConfig, *, rank: int = 0) -> None:
        self.cfg, self.rank = cfg, rank
        self.result: Path | str = cfg.out if is_url(cfg.out) else Path(cfg.out)
        self._files: list[tuple[Path, Location]] = []  # checkpoint and side file, in upload order
        self._log: tuple[Path, Location] | None = None
        self._sent: dict[str, tuple[int, int, int]] = {}  # remote url -> the local file it holds (ino, size, mtime)
        self._tmp: Path | None = None
        self._cleanup: Any = None
        urls = [k for k in _URL_KEYS if getattr(cfg, k) is not None and is_url(str(getattr(cfg, k)))]
        if not urls:
            return
        self._tmp = Path(tempfile.mkdtemp(prefix="geoarray-fit-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        so = cfg.storage_options
        local: dict[str, Any] = {}  # out / resume / log_dir in the working folder
        out_loc = location(cfg.out, so) if "out" in urls else None
        if out_loc is not None:
            local["out"] = str(self._tmp / "out" / out_loc.name)
            side = Location(out_loc.url + SIDE, out_loc.options_json)
            self._files = [(Path(local["out"]), out_loc), (Path(local["out"] + SIDE), side)]
        if "log_dir" in urls:
            local["log_dir"] = str(self._tmp / "log")
            self._log = (Path(local["log_dir"]), location(str(cfg.log_dir), so))
        if cfg.resume is not None:
            res_loc = location(cfg.resume, so) if "resume" in urls else None
            if res_loc is not None and res_loc == out_loc:  # resume=out: continue in the same files
                local["resume"] = local["out"]
                for path, remote in self._files:
                    self._get(remote, path)
            else:
                if res_loc is not None:
                    local["resume"] = str(self._tmp / "resume" / res_loc.name)
                    res_side = Location(res_loc.url + SIDE, res_loc.options_json)
                    self._get(res_loc, Path(local["resume"]), record=False)
                    self._get(res_side, Path(local["resume"] + SIDE), record=False)
                if out_loc is not None and rank == 0:  # as locally: a resumed run keeps an existing out's best
                    self._get(out_loc, Path(local["out"]))
        self.cfg = dataclasses.replace(cfg, **local)

    def _get(self, remote: Location, path: Path, *, record: bool = True) -> None:
        """Download ``remote`` to ``path`` when it exists."""
        if not remote.isfile():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        remote.fs.get_file(remote.path, str(path))
        if record:
            self._sent[remote.url] = _stamp(path)

    def pairs(self) -> list[tuple[Path, Location]]:
        """Every local file that has a place in object storage, in upload order."""
        pairs = list(self._files)
        if self._log is not None and self._log[0].is_dir():
            root, remote = self._log
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    pairs.append((p, remote.child(p.relative_to(root).as_posix())))
        return pairs

    def publish(self) -> None:
        """Upload each file that changed since the last call (one ``put`` each), and delete the objects whose
        local file the run deleted (a finished run's side file, a collapsed run's checkpoint)."""
        if self._tmp is None or self.rank != 0:
            return
        for path, remote in self.pairs():
            try:
                if path.is_file():
                    stamp = _stamp(path)
                    if self._sent.get(remote.url) != stamp:
                        remote.fs.put_file(str(path), remote.path)
                        self._sent[remote.url] = stamp
                elif self._sent.pop(remote.url, None) is not None:
                    remote.fs.rm_file(remote.path)
            except Exception as e:  # keep the files: hours of training must not vanish with the temp folder
                self._cleanup.detach()
                raise TrainError(
                    f"could not upload {path.name} to {remote.url!r} ({type(e).__name__}: {e}). The run's files "
                    f"are kept in {str(self._tmp)!r}: upload them by hand, or check the bucket and storage_options "
                    "and resume= the last checkpoint in object storage."
                ) from None

    def close(self) -> None:
        """Remove the local working folder (a no-op for local paths)."""
        if self._tmp is not None:
            self._cleanup()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class MetricsLog:
    """Per-epoch metrics to CSV (and TensorBoard when it is installed)."""

    def __init__(self, log_dir: str | None) -> None:
        self.dir = Path(log_dir) if log_dir else None
        self.rows: list[dict[str, Any]] = []
        self.tb: Any = None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional; metrics.csv is always written
                log.debug("tensorboard is not installed: metrics go to metrics.csv only")
            else:
                self.tb = SummaryWriter(str(self.dir))

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.dir:
            return
        path = self.dir / "metrics.csv"
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(float(v)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()
