"""A real S3 API on localhost for the object-storage tests: moto's threaded server, started and stopped inside
the test session. Nothing reaches an outside address: the endpoint is checked to be 127.0.0.1, and the AWS
variables are set to dummies (no profile, no instance metadata), also for subprocesses and dask workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    storage_options: dict[str, Any]

    @property
    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem("s3", **self.storage_options)

    def bucket(self, *, versioned: bool = True) -> str:
        """A fresh bucket (versioned: a rewritten object leaves a second version behind, which tests count)."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1"
        )

    def digest(self, url: str) -> dict[str, str]:
        """sha256 of every object under ``url`` (key relative to it -> digest), read back over the S3 API."""
        fs = self.fs
        fs.invalidate_cache()
        root = url.removeprefix("s3://").rstrip("/") + "/"
        blobs = fs.cat(sorted(fs.find(root)))  # concurrent GETs
        return {p[len(root) :]: hashlib.sha256(b).hexdigest() for p, b in sorted(blobs.items())}

    def versions(self, url: str) -> dict[str, int]:
        """How many versions each object under ``url`` has (1 = written once, never rewritten)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        out: dict[str, int] = {}
        pages = self.client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix + "/")
        for page in pages:
            for v in page.get("Versions", []):
                key = v["Key"][len(prefix) + 1 :]
                out[key] = out.get(key, 0) + 1
        return out


@pytest.fixture(scope="session")
def s3():
    """The local S3 server for the session; yields an :class:`S3` (endpoint, storage_options, helpers)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    dummy = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
    }
    saved = {k: os.environ.get(k) for k in [*dummy, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"]}
    os.environ.update(dummy)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1", f"the S3 test server must listen on localhost, got {host}"
        endpoint = f"http://{host}:{port}"
        # botocore's default endpoint too: an S3 client made without storage_options stays on localhost
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        yield S3(endpoint, {"key": "x", "secret": "y", "client_kwargs": {"endpoint_url": endpoint}})
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
