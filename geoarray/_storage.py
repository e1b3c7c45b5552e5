"""Where a store or a checkpoint lives: a local path or an fsspec URL (``s3://…``, ``gs://…``, ``memory://…``).

:class:`Location` is a small picklable value (URL + ``storage_options``) that tasks carry to dask workers; each
process builds its own fsspec filesystem from it. Zarr reads and writes go through zarr's own fsspec store
(``zarr.open_array(url, storage_options=...)``, ``xr.open_zarr(url, storage_options=...)``); this module only
answers the questions the local code asked of ``pathlib``: does it exist, which chunk keys are there, remove a
variable, probe writability.

Object stores have no directories and no renames, but a PUT is atomic: an object is either all there or absent.
That is what the resumable writer relies on there (locally, zarr writes a ``*.partial`` file and renames it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from geoarray.errors import StoreError

__all__ = ["Location", "is_url", "location"]


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL with a protocol (a Windows drive letter is not one)."""
    if not isinstance(path, str):
        return False
    scheme = urlparse(path).scheme
    return len(scheme) > 1 and scheme != "file" and "://" in path


@dataclass(frozen=True)
class Location:
    """A store or file: ``url`` (an absolute local path, or an fsspec URL) and its ``storage_options``.

    Hashable and picklable (the options are kept as canonical JSON), so it keys caches and travels to workers.
    """

    url: str
    options_json: str = "{}"

    @property
    def remote(self) -> bool:
        return is_url(self.url)

    @property
    def options(self) -> dict[str, Any]:
        return dict(json.loads(self.options_json))

    @cached_property
    def fs(self) -> Any:
        """The fsspec filesystem (fsspec caches instances per process and options)."""
        import fsspec

        if not self.remote:
            return fsspec.filesystem("file")
        fs, _ = fsspec.core.url_to_fs(self.url, **self.options)
        return fs

    @property
    def path(self) -> str:
        """The path inside the filesystem (the URL without its protocol)."""
        if not self.remote:
            return self.url
        return str(self.fs._strip_protocol(self.url)).rstrip("/")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Location:
        return Location(self.url.rstrip("/") + "/" + name, self.options_json)

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict[str, Any]:  # the filesystem is rebuilt in each process, never pickled
        return {"url": self.url, "options_json": self.options_json}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- questions the local code asked of pathlib -------------------------------------------------------
    def refresh(self) -> None:
        """Forget cached listings (s3fs caches them; another process may have written since)."""
        if self.remote:
            self.fs.invalidate_cache(self.path)

    def _ask(self, question: Any) -> Any:
        """Run a filesystem query; an unreachable endpoint or refused credentials become a StoreError."""
        self.refresh()
        try:
            return question()
        except FileNotFoundError:
            raise
        except Exception as e:  # botocore/aiohttp/gcsfs raise many types for "cannot reach" and "denied"
            raise StoreError(
                f"cannot reach {self.url!r} ({type(e).__name__}: {e}). Check the URL, and the endpoint and "
                "credentials in storage_options (e.g. {'key': ..., 'secret': ..., 'client_kwargs': "
                "{'endpoint_url': ...}}; without them the AWS_* environment variables are used)."
            ) from None

    def exists(self) -> bool:
        if not self.remote:
            return Path(self.url).exists()
        return bool(self._ask(lambda: self.fs.exists(self.path)))

    def isfile(self) -> bool:
        if not self.remote:
            return Path(self.url).is_file()
        return bool(self._ask(lambda: self.fs.isfile(self.path)))

    def isdir(self) -> bool:
        """A local directory, or a prefix with objects under it."""
        if not self.remote:
            return Path(self.url).is_dir()
        return bool(self._ask(lambda: self.fs.isdir(self.path)))

    def listdir(self) -> list[str]:
        """Names directly under this location (empty if there are none)."""
        if not self.remote:
            return sorted(p.name for p in Path(self.url).iterdir()) if Path(self.url).is_dir() else []
        try:
            found = self._ask(lambda: self.fs.ls(self.path, detail=False))
        except FileNotFoundError:
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found)

    def check_bucket(self) -> None:
        """Refuse a URL whose bucket (first path component) does not exist: zarr would fail mid-write."""
        bucket = self.path.lstrip("/").split("/", 1)[0]
        if self.remote and bucket and self.url.startswith(("s3://", "gs://", "gcs://", "az://", "abfs://")):
            if not self._ask(lambda: self.fs.exists(bucket)):
                # s3fs's exists() answers False for an endpoint it cannot reach, too: ask again in a way that
                # raises, so a dead endpoint or refused credentials are not reported as a missing bucket
                try:
                    self.fs.info(bucket)
                except FileNotFoundError:
                    pass
                except Exception as e:
                    raise StoreError(
                        f"cannot reach {self.url!r} ({type(e).__name__}: {e}). Check the URL, and the endpoint and "
                        "credentials in storage_options (e.g. {'key': ..., 'secret': ..., 'client_kwargs': "
                        "{'endpoint_url': ...}}; without them the AWS_* environment variables are used)."
                    ) from None
                raise StoreError(
                    f"the bucket {bucket!r} of {self.url!r} does not exist (or these credentials cannot see it); "
                    "create it first, or check the URL and storage_options."
                )

    def keys(self) -> set[str]:
        """Every file/object under this location, as keys relative to it (one listing, not one request each)."""
        self.refresh()
        base = self.path.rstrip("/") + "/"
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return set()
        return {str(p)[len(base) :] for p in found if str(p).startswith(base)}

    def remove(self) -> None:
        """Delete this location and everything under it (a variable's folder or prefix)."""
        if self.exists():
            self.fs.rm(self.path, recursive=True)
            self.refresh()

    def read_bytes(self) -> bytes:
        with self.fs.open(self.path, "rb") as f:
            return bytes(f.read())

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.path, data)

    # -- zarr ------------------------------------------------------------------------------------------------
    def zarr_kwargs(self) -> dict[str, Any]:
        """What zarr/xarray need besides the URL: the storage options, for a URL."""
        return {"storage_options": self.options} if self.remote else {}

    def open_array(self, path: str | None = None, **kw: Any) -> Any:
        """``zarr.open_array`` on this store (zarr's own FsspecStore for a URL)."""
        import zarr

        if path is not None:
            kw["path"] = path
        return zarr.open_array(self.url, **self.zarr_kwargs(), **kw)


def location(store: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None = None) -> Location:
    """A :class:`Location` for a local path (made absolute) or an fsspec URL with its ``storage_options``.

    ``storage_options`` are for URLs only; with a local path they are refused (they would be ignored silently).
    """
    if isinstance(store, Location):
        if storage_options:
            return Location(store.url, _canonical(storage_options, store.url))
        return store
    if storage_options is not None and not isinstance(storage_options, dict):
        raise StoreError(
            f"storage_options={storage_options!r}; expected a dict of fsspec options such as "
            "{'key': ..., 'secret': ..., 'client_kwargs': {'endpoint_url': ...}} (or None)."
        )
    if isinstance(store, str) and "://" in store and not store.startswith("file://"):
        _check_url(store)
    if isinstance(store, str) and is_url(store):
        return Location(store.rstrip("/"), _canonical(storage_options or {}, store))
    if isinstance(store, str) and store.startswith("file://"):
        store = urlparse(store).path
    elif isinstance(store, (str, os.PathLike)):
        _check_not_a_broken_url(str(store))
    if storage_options:
        raise StoreError(
            f"storage_options were given for the local path {str(store)!r}; they apply to URLs only "
            "(s3://bucket/cube.zarr, gs://..., memory://...). Drop them, or pass the store's URL."
        )
    return Location(str(Path(store).resolve()))


def _canonical(options: dict[str, Any], url: str) -> str:
    try:
        return json.dumps(options, sort_keys=True)
    except TypeError as e:
        raise StoreError(
            f"storage_options for {url!r} hold a value that is not JSON-serialisable ({e}); expected plain "
            "strings, numbers, booleans, lists and dicts, so the options can travel to dask workers."
        ) from None


#: protocols whose URL names a bucket (or container) first: s3://bucket/key
_BUCKETED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss")


def _check_url(url: str) -> None:
    """Refuse a URL fsspec would misread: an unknown or upper-case protocol (a raw ValueError in fsspec), no bucket
    or nothing after the protocol (``s3://`` became the local folder ``s3:``), a query or fragment (written
    under a key that ends in it, and not found again by open_cube)."""
    import fsspec

    scheme, rest = url.split("://", 1)
    known = fsspec.available_protocols()
    if scheme not in known:
        hint = (
            f"protocols are lower case: {scheme.lower()}://{rest}"
            if scheme.lower() in known
            else "expected one fsspec knows, such as s3://, gs://, az://, memory://"
        )
        raise StoreError(f"{url!r} has the protocol {scheme!r}, which fsspec does not know; {hint}.")
    parsed = urlparse(url)
    if not rest.strip("/") or (scheme in _BUCKETED and not parsed.netloc):
        raise StoreError(
            f"{url!r} names no {'bucket' if scheme in _BUCKETED else 'location'}; expected a URL such as "
            f"{scheme}://bucket/site.zarr."
        )
    if parsed.query or parsed.fragment:
        raise StoreError(
            f"{url!r} holds a query or fragment ({'?' + parsed.query if parsed.query else '#' + parsed.fragment}); "
            "expected a plain store URL such as s3://bucket/site.zarr. Pass options (endpoint, credentials, "
            "region) in storage_options."
        )


def _check_not_a_broken_url(path: str) -> None:
    """A local path that is a URL missing a slash (``s3:/bucket/site.zarr``) would make a local folder ``s3:``."""
    import fsspec

    head = path.split("/", 1)[0]
    scheme = head[:-1]
    if head.endswith(":") and len(scheme) > 1 and scheme.lower() in fsspec.available_protocols() and scheme != "file":
        raise StoreError(
            f"{path!r} looks like a URL that lost a slash (here it would be the local folder {head!r}); expected "
            f"{scheme.lower()}://{path.split('/', 1)[1].lstrip('/') if '/' in path else ''} (a command option "
            "that takes a local path, such as ingest's --output, takes no URL)."
        )
