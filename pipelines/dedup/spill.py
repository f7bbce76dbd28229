"""Scratch files of the global pass, through the run's scratch ``Store`` (a local directory or an S3 prefix).

Every intermediate file is a flat array of fixed-size records, sorted by a
partition key and cut into ``P`` contiguous partitions; its writer returns the
``P + 1`` row offsets of those partitions, so a task that owns partition ``p``
reads just rows ``[offsets[p], offsets[p + 1])`` of each file: a ranged read,
never the whole file (a seek on a local file, a ranged GET on S3).

- Key files (pass 1, one per shard and key kind: exact, url, band b): hash
  keys partitioned by hash range (the 64-bit space cut into ``P`` equal
  slices; hashes are uniform, so partitions are balanced); a key group never
  straddles two partitions.
- Pair and edge files (bucket, pair and component tasks): partitioned by node
  range, a node being a record's keep rank (0 = kept first).

Scratch files live for one run (the runner removes them): a local write goes
straight to its final name, without a temp file or fsync; an S3 one is
uploaded whole when written.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator

import numpy as np

from pipelines.core.store import LocalStore, Store

EXACT_DTYPE = np.dtype([("k", "<u8"), ("k2", "<u8"), ("r", "<i8")])  # 128-bit key (exact text, URL), rank
# Band key, rank, and where the record's shingles are (shard, first shingle, count) for Jaccard verification.
BAND_DTYPE = np.dtype([("k", "<u8"), ("r", "<i8"), ("s", "<u4"), ("c", "<u4"), ("o", "<u8")])
_SPACE = 1 << 64


def hash_bounds(parts: int) -> np.ndarray:
    """The ``parts - 1`` inner cuts of the 64-bit hash space into equal slices."""
    return np.array([(_SPACE * p) // parts for p in range(1, parts)], dtype=np.uint64)


def node_bounds(n: int, parts: int) -> np.ndarray:
    """The ``parts - 1`` inner cuts of the node (rank) range ``[0, n)`` into equal slices."""
    return np.array([(n * p) // parts for p in range(1, parts)], dtype=np.int64)


def key_rel(shard: int, kind: str) -> str:
    return f"keys/s{shard:05d}/{kind}.bin"


def shingle_rel(shard: int) -> str:
    """Raw little-endian uint64 shingle hashes of the shard's records, concatenated (for Jaccard verification)."""
    return f"shingles/s{shard:05d}.u64"


def signature_rel(shard: int) -> str:
    """Per record of the shard (row order), the low 32 bits of its MinHash signature (for the dedup index)."""
    return f"signatures/s{shard:05d}.u32"


@contextlib.contextmanager
def writing(store: Store, rel: str) -> Iterator[Path]:
    """A local path whose bytes become ``rel`` in the store when the block ends."""
    if isinstance(store, LocalStore):
        path = store.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with store.writer(rel) as tmp:
            yield tmp


def write_partitioned(store: Store, rel: str, rec: np.ndarray, key: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Write ``rec`` sorted by ``key`` (stable); returns the row offsets of the ``len(bounds) + 1`` partitions."""
    order = np.argsort(key, kind="stable")
    rec, key = rec[order], key[order]
    with writing(store, rel) as path:
        rec.tofile(path)
    return np.r_[0, np.searchsorted(key, bounds, "left"), len(rec)].astype(np.int64)


def read_rows(store: Store, rel: str, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a flat record file."""
    if stop <= start:
        return np.zeros(0, dtype)
    size = dtype.itemsize
    if isinstance(store, LocalStore):
        return np.fromfile(store.root / rel, dtype=dtype, count=stop - start, offset=start * size)
    return np.frombuffer(read_range(store, rel, start * size, stop * size), dtype=dtype).copy()


def read_range(store: Store, rel: str, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of a scratch file: a seek locally, one ranged GET on S3."""
    if isinstance(store, LocalStore):
        with open(store.root / rel, "rb") as f:
            f.seek(start)
            return f.read(stop - start)
    body = store.client.get_object(Bucket=store.bucket, Key=store.key(rel), Range=f"bytes={start}-{stop - 1}")["Body"]
    return body.read()


def read_parts(store: Store, dtype: np.dtype, parts: list[tuple[str, int, int]]) -> np.ndarray:
    """One partition of many files: the rows ``(rel, start, stop)`` of each, concatenated."""
    pieces = [read_rows(store, rel, dtype, a, b) for rel, a, b in parts]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


def slices(files: list[tuple[str, np.ndarray]], p: int) -> list[tuple[str, int, int]]:
    """The non-empty row ranges of partition ``p`` in files given as (rel, partition offsets)."""
    return [(rel, int(off[p]), int(off[p + 1])) for rel, off in files if off[p + 1] > off[p]]


def save_array(store: Store, rel: str, arr: np.ndarray) -> None:
    with writing(store, rel) as path:
        np.save(path, arr, allow_pickle=False)


def load_array(store: Store, rel: str, cache: bool = False) -> np.ndarray:
    """An array ``save_array`` wrote; ``cache``: kept downloaded for this process's later tasks (fetch), else
    read into memory only (no local copy left behind)."""
    if cache or isinstance(store, LocalStore):
        return np.load(store.fetch(rel), allow_pickle=False)
    return np.load(io.BytesIO(store.read_bytes(rel)), allow_pickle=False)


class ShingleWriter:
    """Appends each batch's shingle hashes to the shard's shingle file: memory holds one batch, not the shard."""

    def __init__(self, store: Store, shard: int):
        self._stack = contextlib.ExitStack()
        self.file = open(self._stack.enter_context(writing(store, shingle_rel(shard))), "wb")
        self.written = 0  # shingles so far: where the next record's start

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Write a batch; returns each record's first shingle position in the file."""
        self.file.write(np.ascontiguousarray(hashes, dtype="<u8").tobytes())
        starts = self.written + np.cumsum(counts) - counts
        self.written += int(np.sum(counts))
        return starts.astype(np.uint64)

    def close(self) -> None:
        self.file.close()
        self._stack.close()


def group_starts(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a new key begins in a sorted key array ((m,) or (m, 2))."""
    if not len(keys):
        return np.zeros(0, bool)
    diff = keys[1:] != keys[:-1]
    if diff.ndim == 2:
        diff = diff.any(axis=1)
    return np.r_[True, diff]
