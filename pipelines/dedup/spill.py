"""Out-of-core key files: per shard, one sorted .npy per LSH band (and one for exact hashes).

Pass 1 writes, for every input shard, each band's (hash, local index) pairs
sorted by hash. Pass 2 merges one band at a time across shards. The merge is
range-partitioned: the 64-bit hash space is cut into equal slices so that one
slice of all shards holds about ``chunk`` entries; each shard's sorted file is
memory-mapped and the slice located by binary search, so only one slice is
ever in memory, whatever the corpus size (hashes are uniform, so the slices
are balanced). Within a slice, records sharing a key form a group.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

BAND_DTYPE = np.dtype([("k", "<u8"), ("i", "<u4")])
EXACT_DTYPE = np.dtype([("k", "<u8"), ("k2", "<u8"), ("i", "<u4")])
_SPACE = 1 << 64


def band_file(work: Path, shard: int, band: int) -> Path:
    return work / f"s{shard:05d}" / f"band_{band:03d}.npy"


def exact_file(work: Path, shard: int) -> Path:
    return work / f"s{shard:05d}" / "exact.npy"


def shingle_file(work: Path, shard: int) -> Path:
    """Raw little-endian uint64 shingle hashes of the shard's records, concatenated (for Jaccard verification)."""
    return work / f"s{shard:05d}" / "shingles.u64"


def shingle_index_file(work: Path, shard: int) -> Path:
    """(n + 1,) int64: record i's shingles are entries [idx[i], idx[i+1]) of shingle_file."""
    return work / f"s{shard:05d}" / "shingles_index.npy"


class ShingleWriter:
    """Appends each batch's shingle hashes to the shard's shingle file: memory holds one batch, not the shard."""

    def __init__(self, work: Path, shard: int):
        self.path = shingle_file(work, shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "wb")
        self.counts: list[np.ndarray] = []

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(hashes, dtype="<u8").tobytes())
        self.counts.append(np.asarray(counts, dtype=np.int64))

    def close(self, work: Path, shard: int) -> None:
        self.file.close()
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        _save(shingle_index_file(work, shard), np.r_[0, np.cumsum(counts)].astype(np.int64))


def url_file(work: Path, shard: int) -> Path:
    return work / f"s{shard:05d}" / "url.npy"


def _save(path: Path, arr: np.ndarray) -> None:
    # Scratch files of one run (deleted after pass 2): no atomic rename or fsync needed.
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def write_shard_keys(work: Path, shard: int, exact: np.ndarray | None, bands: np.ndarray | None,
                     url: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """exact: (n, 2) uint64 or None; bands: (n, B) uint64 or None; url: (local indices, (m, 2) uint64) of the
    records that have a URL, or None. Each written sorted by key, then index."""
    if url is not None:
        rows, keys = url
        rec = np.empty(len(rows), EXACT_DTYPE)
        rec["k"], rec["k2"], rec["i"] = keys[:, 0], keys[:, 1], rows
        _save(url_file(work, shard), np.sort(rec, order=["k", "k2", "i"]))
    if exact is not None:
        rec = np.empty(len(exact), EXACT_DTYPE)
        rec["k"], rec["k2"], rec["i"] = exact[:, 0], exact[:, 1], np.arange(len(exact))
        _save(exact_file(work, shard), np.sort(rec, order=["k", "k2", "i"]))
    if bands is not None:
        for b in range(bands.shape[1]):
            rec = np.empty(len(bands), BAND_DTYPE)
            rec["k"], rec["i"] = bands[:, b], np.arange(len(bands))
            _save(band_file(work, shard, b), np.sort(rec, order=["k", "i"]))


def merged_slices(files: list[Path], offsets: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (keys, global index) slices of the k-way merge of sorted key files, in key order.

    keys is (m,) uint64 for band files or (m, 2) for exact files; equal keys never straddle two slices.
    """
    maps = [np.load(f, mmap_mode="r") for f in files]
    total = sum(len(m) for m in maps)
    parts = max(1, -(-total // max(chunk, 1)))
    edges = [(_SPACE * p) // parts for p in range(parts + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        pieces = []
        for m, off in zip(maps, offsets):
            if not len(m):
                continue
            k = m["k"]
            s = int(np.searchsorted(k, np.uint64(lo), "left"))
            e = len(m) if hi >= _SPACE else int(np.searchsorted(k, np.uint64(hi), "left"))
            if e > s:
                piece = np.array(m[s:e])  # copy only this slice out of the map
                pieces.append((piece, off))
        if not pieces:
            continue
        idx = np.concatenate([p["i"].astype(np.int64) + off for p, off in pieces])
        if "k2" in pieces[0][0].dtype.names:
            keys = np.stack([np.concatenate([p["k"] for p, _ in pieces]), np.concatenate([p["k2"] for p, _ in pieces])], 1)
            order = np.lexsort((idx, keys[:, 1], keys[:, 0]))
        else:
            keys = np.concatenate([p["k"] for p, _ in pieces])
            order = np.lexsort((idx, keys))
        yield keys[order], idx[order]
    del maps


def group_starts(keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a new key begins in a sorted key array ((m,) or (m, 2))."""
    if not len(keys):
        return np.zeros(0, bool)
    diff = keys[1:] != keys[:-1]
    if diff.ndim == 2:
        diff = diff.any(axis=1)
    return np.r_[True, diff]
