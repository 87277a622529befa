"""Where a runtime's shared data lives: a local folder (the embedded default) or an object store.

``LETTA_RAY_STORAGE=s3://bucket/prefix`` puts archival memory (LanceDB, which speaks
``s3://`` itself) and snapshots of the metadata (Parquet, through pyarrow's S3 filesystem)
in the object store; credentials, region and endpoint come from the usual ``AWS_*``
variables (``AWS_ENDPOINT_URL`` for MinIO or another S3-compatible server), so the same
configuration serves boto3, the AWS CLI, LanceDB and pyarrow. No data of ours is synced by
hand: LanceDB and pyarrow do the object-store I/O, with their own retries and timeouts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from letta_ray.errors import InvalidInputError, StorageError

OBJECT_STORE_SCHEMES = ("s3", "gs", "az")

# Requests to the object store time out rather than hang a write: a slow or briefly
# unreachable store fails (and is retried) in seconds, not minutes.
CONNECT_TIMEOUT_S = 5
REQUEST_TIMEOUT_S = 30


@dataclass(frozen=True)
class StorageLocation:
    """A storage URI (``s3://bucket/prefix``, ``gs://...``, ``az://...``) or a local folder."""

    uri: str
    options: dict[str, str] = field(default_factory=dict)  # LanceDB's option names, over the environment's

    def __post_init__(self) -> None:
        scheme = urlsplit(self.uri).scheme
        if scheme and len(scheme) > 1 and scheme not in (*OBJECT_STORE_SCHEMES, "file"):
            raise InvalidInputError(f"storage {self.uri!r}: the scheme must be one of "
                                    f"{', '.join(OBJECT_STORE_SCHEMES)}, or a local folder")
        if self.remote and not urlsplit(self.uri).netloc:
            raise InvalidInputError(f"storage {self.uri!r} names no bucket")

    @property
    def remote(self) -> bool:
        return urlsplit(self.uri).scheme in OBJECT_STORE_SCHEMES

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme

    def child(self, *parts: str) -> str:
        if self.remote:
            return "/".join([self.uri.rstrip("/"), *parts])
        base = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
        return os.path.join(os.path.expanduser(base), *parts)

    # ------------------------------------------------------------------ LanceDB

    def lance_options(self) -> dict[str, str]:
        """``storage_options`` for ``lancedb.connect``: the endpoint and region of the
        environment (object_store reads credentials from it itself), timeouts, then ours."""
        options: dict[str, str] = {}
        if self.scheme == "s3":
            endpoint = _endpoint()
            if endpoint:
                options["aws_endpoint"] = endpoint
                if endpoint.startswith("http://"):
                    options["allow_http"] = "true"
            region = _region()
            if region:
                options["aws_region"] = region
        if self.remote:
            options["connect_timeout"] = f"{CONNECT_TIMEOUT_S}s"
            options["timeout"] = f"{REQUEST_TIMEOUT_S}s"
        return {**options, **self.options}

    # ------------------------------------------------------------------ files (pyarrow)

    def filesystem(self) -> tuple[Any, str]:
        """A pyarrow filesystem and the base path in it for this location."""
        import pyarrow.fs as pafs

        if not self.remote:
            base = self.child()
            os.makedirs(base, exist_ok=True)
            return pafs.LocalFileSystem(), base
        parts = urlsplit(self.uri)
        base = f"{parts.netloc}{parts.path}".rstrip("/")
        if self.scheme != "s3":
            fs, path = pafs.FileSystem.from_uri(self.uri)
            return fs, path.rstrip("/")
        endpoint = self.options.get("aws_endpoint") or _endpoint()
        kwargs: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": REQUEST_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        }
        region = self.options.get("aws_region") or _region()
        if region:
            kwargs["region"] = region
        if endpoint:
            split = urlsplit(endpoint)
            kwargs["endpoint_override"] = split.netloc or endpoint
            kwargs["scheme"] = split.scheme or "https"
        key, secret = self.options.get("aws_access_key_id"), self.options.get("aws_secret_access_key")
        if key and secret:
            kwargs["access_key"], kwargs["secret_key"] = key, secret
        try:
            return pafs.S3FileSystem(**kwargs), base
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for bad settings
            raise StorageError(f"cannot reach the object store {self.uri}: {exc}") from exc


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
