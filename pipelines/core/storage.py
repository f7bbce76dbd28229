"""Input access for local paths, globs and ``s3://`` URIs (boto3).

S3 settings come from the environment (never from the repo):
``AWS_ENDPOINT_URL`` / ``PIPELINES_S3_ENDPOINT`` for any S3-compatible store,
``PIPELINES_S3_ANONYMOUS=1`` for unsigned requests (public Common Crawl), and
the usual AWS credential chain otherwise. Reads stream; nothing is downloaded
whole into memory.
"""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import io
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

S3_PREFIX = "s3://"
log = logging.getLogger(__name__)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of a response body cut off mid-stream (connection reset, read timeout, short read)."""
    from botocore.exceptions import ConnectionClosedError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError, ReadTimeoutError as Urllib3ReadTimeout

    return (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError, ProtocolError,
            Urllib3ReadTimeout, ConnectionError, TimeoutError)


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without bucket: {uri!r}")
    return bucket, key


def s3_client():
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    # Throttling (503 SlowDown), 5xx and timeouts are retried with exponential backoff; 4xx are not.
    cfg = dict(retries={"max_attempts": int(os.environ.get("PIPELINES_S3_MAX_ATTEMPTS", 8)), "mode": "adaptive"},
               connect_timeout=10, read_timeout=float(os.environ.get("PIPELINES_S3_READ_TIMEOUT", 60)))
    if os.environ.get("PIPELINES_S3_ANONYMOUS") == "1":
        cfg["signature_version"] = UNSIGNED
    endpoint = os.environ.get("PIPELINES_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint, config=Config(**cfg))


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def input_uri(path: str | Path, root: str | Path | None = None) -> str:
    """Where an input named in params.yaml is read from: the one path rule for every such input (ingest
    files and globs, decontamination eval sets).

    An ``s3://`` URI as written; an absolute path as written, inside the workspace or not; anything else
    relative to ``root`` (the workspace). Inputs may live outside the workspace (a shared corpus or benchmark
    mount) because they are only read and each is fingerprinted by content (sha256; ETag on S3), so a changed
    file re-runs the stages that read it. What the pipeline writes goes through ``pipelines.config.resolve``,
    which keeps it inside the workspace; the Airflow run form is stricter still (it takes untrusted input).
    """
    path = str(path)
    if is_s3(path) or root is None or Path(path).is_absolute():
        return path
    return str(Path(root) / path)


def expand_inputs(patterns: list[str] | str, root: str | Path | None = None) -> list[str]:
    """Resolve local paths/globs (``input_uri``: relative to ``root``) and s3 keys/prefix globs into a sorted list."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pat in patterns:
        if is_s3(pat):
            out.extend(_expand_s3(pat))
            continue
        p = Path(input_uri(pat, root))
        if _has_magic(str(p)):
            matches = sorted(m for m in glob.glob(str(p), recursive=True) if os.path.isfile(m))
            out.extend(matches)
        elif p.is_dir():
            out.extend(sorted(str(m) for m in p.rglob("*") if m.is_file()))
        else:
            out.append(str(p))  # a missing file fails loudly when opened, naming it
    return sorted(dict.fromkeys(out))


def _expand_s3(pattern: str) -> list[str]:
    bucket, key = split_s3(pattern)
    if not _has_magic(key):
        return [pattern]
    prefix = key.split("*")[0].split("?")[0].split("[")[0]
    client = s3_client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if fnmatch.fnmatchcase(obj["Key"], key):
                keys.append(f"{S3_PREFIX}{bucket}/{obj['Key']}")
    return sorted(keys)


def open_input(uri: str) -> BinaryIO:
    """A binary stream over a local file or an S3 object."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except Exception as e:  # botocore raises many types; name the object in every case
            raise IOError(f"cannot read {uri}: {e}") from e
        etag = obj.get("ETag")

        def reopen(offset: int):
            # Resume where the dropped connection stopped; If-Match: the same object version or an error.
            extra = {"IfMatch": etag} if etag else {}
            return client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-", **extra)["Body"]

        return io.BufferedReader(_StreamingBodyIO(obj["Body"], reopen, uri), buffer_size=1 << 20)
    return open(uri, "rb")


def open_seekable(uri: str) -> BinaryIO:
    """A seekable binary file over a local path or an S3 object (ranged GETs: reading a parquet footer and a
    few row groups fetches just those bytes)."""
    if not is_s3(uri):
        return open(uri, "rb")
    bucket, key = split_s3(uri)
    return io.BufferedReader(_S3RangeFile(s3_client(), bucket, key), buffer_size=1 << 20)


class _S3RangeFile(io.RawIOBase):
    def __init__(self, client, bucket: str, key: str):
        self._client, self._bucket, self._key = client, bucket, key
        self._size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        if self._pos >= self._size or not len(b):
            return 0
        end = min(self._size, self._pos + len(b)) - 1
        data = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end}")["Body"].read()
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)


def input_fingerprint(uri: str) -> str:
    """Identity of an input for resume decisions: content hash locally, ETag on S3."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        head = s3_client().head_object(Bucket=bucket, Key=key)
        return f"etag:{head['ETag'].strip(chr(34))}:{head['ContentLength']}"
    from pipelines.core.hashing import sha256_file

    return "sha256:" + sha256_file(uri)


class _StreamingBodyIO(io.RawIOBase):
    """Adapts botocore's StreamingBody to a raw stream so it can be buffered."""

    def __init__(self, body, reopen=None, name: str = "", max_retries: int | None = None):
        self._body = body
        self._reopen = reopen  # offset -> a new body from that byte (a ranged GET), for mid-stream retries
        self._name = name
        self._pos = 0
        self._retries = int(os.environ.get("PIPELINES_S3_STREAM_RETRIES", 5)) if max_retries is None else max_retries

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        attempt = 0
        while True:
            try:
                data = self._body.read(len(b))
                break
            except _transient_errors() as e:
                # botocore retries the request, not a body cut off mid-stream: re-request the rest.
                attempt += 1
                if self._reopen is None or attempt > self._retries:
                    raise
                delay = min(0.2 * 2 ** (attempt - 1), 10.0)
                log.warning("%s: connection lost at byte %d (%s); retry %d/%d in %.1fs",
                            self._name, self._pos, type(e).__name__, attempt, self._retries, delay)
                time.sleep(delay)
                with contextlib.suppress(Exception):
                    self._body.close()
                self._body = self._reopen(self._pos)
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            super().close()
