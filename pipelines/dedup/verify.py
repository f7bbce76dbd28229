"""Optional check of LSH candidate pairs by the true Jaccard similarity of their shingle sets.

Pass 1 spills every record's shingle hashes (the ones its MinHash signature
was computed from) to a scratch file per shard (pipelines.dedup.spill); here
each record of a candidate pair is read back by offset (no mmap: the pages
do not stay resident), so memory is bounded by a small cache of shingle
sets, not by the number of candidates, and no text is re-read or re-shingled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dedup import spill

CACHE_RECORDS = 4096  # >= 2; shingle sets kept between pairs (pairs come sorted by their first record)


def read_text_column(path) -> pa.ChunkedArray:
    # ParquetFile.read, not pq.read_table: the latter imports pyarrow.dataset (and pandas), seconds of start-up.
    with pq.ParquetFile(path) as f:
        return f.read(columns=["text"]).column("text")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def jaccard_verifier(work: Path, offsets: np.ndarray, threshold: float):
    """A callable (src, dst) -> bool mask of the pairs whose shingle-set Jaccard >= threshold."""
    bounds = np.asarray(offsets, dtype=np.int64)
    starts = {}  # shard -> (n+1,) offsets of its records in its shingle file

    def shingles_of(g: int) -> np.ndarray:
        s = int(np.searchsorted(bounds, g, side="right") - 1)
        if s not in starts:
            starts[s] = np.load(spill.shingle_index_file(work, s))
        local = g - int(bounds[s])
        a, b = int(starts[s][local]), int(starts[s][local + 1])
        return np.unique(np.fromfile(spill.shingle_file(work, s), dtype="<u8", count=b - a, offset=8 * a))

    def verify(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        out = np.zeros(len(src), dtype=bool)
        cache: dict[int, np.ndarray] = {}
        for k in np.lexsort((dst, src)).tolist():
            a, b = int(src[k]), int(dst[k])
            if len(cache) + 2 > CACHE_RECORDS and (a not in cache or b not in cache):
                cache.clear()  # never between loading a and b: both stay for this pair
            for g in (a, b):
                if g not in cache:
                    cache[g] = shingles_of(g)
            out[k] = jaccard(cache[a], cache[b]) >= threshold
        return out

    return verify
