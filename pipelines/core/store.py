"""Where a stage's files live: the workspace (default), a shared filesystem path, or an ``s3://`` prefix.

``storage.root`` in params picks it. With the default (``null``) a stage writes its
shards into its workspace directory (``data/<stage>/part-00000.parquet``), as DVC
expects. With a shared root, shards and removed/ files go to a *content-addressed*
key under ``<root>/<stage>/objects/<sha256>.<ext>``: every node of a cluster can read
and write there, and a data version's files are never overwritten by a later version
(a key's bytes never change). The workspace directory then holds the stage's
manifest (every file's key and sha256) and stats: that is what DVC versions, so
``git checkout data/<v> && dvc pull`` gives the manifest of exactly that version,
whose objects the store still holds. Resume fragments (``_shards/*.json``) live
beside the files in the same store, so a worker on another machine can write them.

Writes are atomic either way: a local file is written to a temp name and renamed;
an S3 object appears whole when its PUT completes (and S3 checks the sha256 we
send with it).
"""
from __future__ import annotations

import base64
import hashlib
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from pipelines.core.atomic import TMP_PREFIX, atomic_path, remove_stale_temps
from pipelines.core.hashing import sha256_file
from pipelines.core.storage import is_s3, s3_client, split_s3

OBJECTS = "objects"
FRAGMENTS = "_shards"


class Store:
    """The files of one stage: named files (fragments, published outputs) and data files (shards)."""

    content_addressed = False

    def uri(self, rel: str) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[Path]:
        """Yield a local temp path; when the block succeeds its bytes appear whole under ``rel``."""
        raise NotImplementedError

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.writer(rel) as tmp:
            tmp.write_bytes(data)

    def write_json(self, rel: str, obj) -> None:
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"
        self.write_bytes(rel, text.encode())

    def read_bytes(self, rel: str) -> bytes | None:
        raise NotImplementedError

    def read_json(self, rel: str):
        data = self.read_bytes(rel)
        if data is None:
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            return None  # torn by an old crash: treated as absent

    def put_data(self, rel: str, write: Callable[[Path], None], suffix: str = "") -> dict:
        """Write a data file with ``write(path)`` and publish it whole; returns its manifest entry
        (bytes, sha256, and ``uri`` when the store keeps it elsewhere than ``rel``)."""
        raise NotImplementedError

    def intact(self, name: str, entry: dict) -> bool:
        """True when the data file an entry describes is present with the recorded content."""
        return self.problem(name, entry) is None

    def problem(self, name: str, entry: dict) -> str | None:
        """What is wrong with the data file an entry describes ("missing", "sha256 mismatch"), or None."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """Relative names under ``prefix`` (one level of fragments, say)."""
        raise NotImplementedError

    def fetch(self, rel: str) -> Path:
        """A local file with the bytes of ``rel`` (the file itself, or a download cached for this process)."""
        raise NotImplementedError

    def local_root(self) -> Path:
        raise NotImplementedError(f"{self!r} is not a local directory")

    def clean_temps(self) -> None:
        """Remove what a crashed run left half-written (nothing to do where writes are atomic PUTs)."""


class LocalStore(Store):
    """Files under a directory: the stage's workspace directory (the default) or a shared path."""

    def __init__(self, root: str | Path, content_addressed: bool = False):
        self.root = Path(root)
        self.content_addressed = content_addressed

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def uri(self, rel: str) -> str:
        return str(self.root / rel)

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[Path]:
        with atomic_path(self.root / rel) as tmp:
            yield tmp

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def put_data(self, rel: str, write: Callable[[Path], None], suffix: str = "") -> dict:
        if not self.content_addressed:
            with atomic_path(self.root / rel) as tmp:
                write(tmp)
                entry = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
            return entry
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=self.root) as d:  # same filesystem: rename is atomic
            tmp = Path(d) / Path(rel).name
            write(tmp)
            entry = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
            final = self.root / object_key(entry["sha256"], suffix)
            if not (final.exists() and final.stat().st_size == entry["bytes"]):
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)  # same content, same name: a concurrent writer of it is harmless
        entry["uri"] = str(final)
        return entry

    def problem(self, name: str, entry: dict) -> str | None:
        p = Path(entry["uri"]) if entry.get("uri") else self.root / name
        if not p.is_file():
            return "missing"
        if p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256"):
            return "sha256 mismatch"
        return None

    def remove(self, rel: str) -> None:
        p = self.root / rel
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.iterdir() if p.is_file())

    def fetch(self, rel: str) -> Path:
        return self.root / rel

    def local_root(self) -> Path:
        """The directory itself, for code that works on local files (memory-mapped key files)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def clean_temps(self) -> None:
        remove_stale_temps(self.root)


class S3Store(Store):
    """Files under an ``s3://bucket/prefix``; data files content-addressed, each PUT checked by S3 (sha256)."""

    content_addressed = True

    def __init__(self, root: str):
        self.bucket, self.prefix = split_s3(root.rstrip("/"))
        self._client = None

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def __getstate__(self):  # the boto3 client does not travel to workers; each process makes its own
        return {"bucket": self.bucket, "prefix": self.prefix, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="pipelines-s3-") as tmp:
            path = Path(tmp) / Path(rel).name
            yield path
            self._put(self.key(rel), path, sha256_file(path))

    def _put(self, key: str, path: Path, sha256: str) -> None:
        with open(path, "rb") as f:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=f, ChecksumAlgorithm="SHA256",
                                   ChecksumSHA256=_b64(sha256))

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put_data(self, rel: str, write: Callable[[Path], None], suffix: str = "") -> dict:
        with tempfile.TemporaryDirectory(prefix="pipelines-s3-") as d:
            tmp = Path(d) / Path(rel).name
            write(tmp)
            entry = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
            obj = object_key(entry["sha256"], suffix)
            if not self._has(self.key(obj), entry):
                self._put(self.key(obj), tmp, entry["sha256"])
        entry["uri"] = self.uri(obj)
        return entry

    def _has(self, key: str, entry: dict) -> bool:
        return self._check(self.bucket, key, entry) is None

    def _check(self, bucket: str, key: str, entry: dict) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return "missing"
            raise
        if head["ContentLength"] != entry.get("bytes"):
            return "sha256 mismatch"
        # S3 verified the sha256 we sent when we wrote the object; one written otherwise is read and hashed.
        checksum = head.get("ChecksumSHA256")
        if checksum is None:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            digest = hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
            checksum = _b64(digest.hexdigest())
        return None if checksum == _b64(entry["sha256"]) else "sha256 mismatch"

    def problem(self, name: str, entry: dict) -> str | None:
        if not entry.get("uri"):
            return "missing (no uri recorded)"
        bucket, key = split_s3(entry["uri"])
        return self._check(bucket, key, entry)

    def remove(self, rel: str) -> None:
        for key in self._keys(self.key(rel)):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _keys(self, prefix: str) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def fetch(self, rel: str) -> Path:
        return fetch_uri(self.uri(rel))

    def list(self, prefix: str) -> list[str]:
        base = self.key(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in self._keys(base) if "/" not in k[len(base):])


def _b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def object_key(sha256: str, suffix: str) -> str:
    """Where a data file of a shared store lives: named by its content."""
    return f"{OBJECTS}/{sha256[:2]}/{sha256}{suffix}"


def sub_store(store: Store, rel: str) -> Store:
    """The named files under ``rel`` of a store, as a store of their own (scratch space)."""
    if isinstance(store, S3Store):
        sub = S3Store(store.uri(rel))
        sub.content_addressed = False
        return sub
    return LocalStore(Path(store.uri(rel)))


_FETCHED: dict[str, Path] = {}


def fetch_uri(uri: str) -> Path:
    """A local copy of an ``s3://`` object (downloaded once per process), or the local path itself."""
    if not is_s3(uri):
        return Path(uri)
    if uri not in _FETCHED or not _FETCHED[uri].exists():
        cache = Path(tempfile.gettempdir()) / f"pipelines-fetch-{os.getpid()}"
        cache.mkdir(parents=True, exist_ok=True)
        bucket, key = split_s3(uri)
        path = cache / _cache_name(uri)
        with atomic_path(path) as tmp:
            s3_client().download_file(bucket, key, str(tmp))
        _FETCHED[uri] = path
    return _FETCHED[uri]


def _cache_name(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:20] + "-" + Path(split_s3(uri)[1]).name


def stage_store(storage: dict | None, stage_dir: Path, stage: str) -> Store:
    """The store of one stage: its workspace directory, or ``<storage.root>/<stage>`` (shared fs or S3)."""
    root = (storage or {}).get("root")  # params only: DVC tracks it, so a new root re-runs the stage
    if not root:
        return LocalStore(stage_dir)
    root = str(root).rstrip("/")
    if is_s3(root):
        return S3Store(f"{root}/{stage}")
    if "://" in root:
        raise ValueError(f"storage.root {root!r}: use a local/shared path or s3://bucket/prefix")
    return LocalStore(Path(root) / stage, content_addressed=True)


