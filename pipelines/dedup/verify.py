"""Pair tasks: one per node range, on the executor: distinct LSH candidate pairs, optionally verified by Jaccard.

The band bucket tasks write candidate pairs partitioned by the node range of
their first (better ranked) record; the same pair comes from every band the
two records share, so a pair task keeps each pair once (that is the candidate
count), checks it by the true Jaccard similarity of the two shingle sets when
``verify_threshold`` is set, and writes the pairs it keeps as edges for the
components (pipelines.dedup.components).

Pass 1 spilled every record's shingle hashes (the ones its MinHash signature
was computed from) to a scratch file per shard, and each key entry says where
its record's shingles are: a record is read back by offset (a ranged read;
locally no mmap, so the pages do not stay resident), memory is bounded by a
small cache of shingle sets, and no text is re-read or re-shingled.

A pair with an entry of the dedup index (a refresh, pipelines.dedup.history; the
index entry is always the pair's first record: it ranks first) is checked by
signature agreement instead, since the index keeps signatures, not shingles; a
pair of two index entries is no edge at all (their decisions are frozen).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dedup import history, spill
from pipelines.dedup.buckets import PAIR_DTYPE
from pipelines.dedup.components import LARGE, write_edges
from pipelines.dedup.timing import PhaseClock

CACHE_RECORDS = 4096  # >= 2; shingle sets kept between pairs (pairs come sorted by their first record)
SHINGLE = np.dtype("<u8")


def read_text_column(path) -> pa.ChunkedArray:
    # ParquetFile.read, not pq.read_table: the latter imports pyarrow.dataset (and pandas), seconds of start-up.
    with pq.ParquetFile(path) as f:
        return f.read(columns=["text"]).column("text")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def verified(store, pairs: np.ndarray, threshold: float, index: dict | None = None) -> np.ndarray:
    """Bool mask of the pairs (sorted by first record) whose shingle-set Jaccard >= threshold (index entries:
    whose estimated Jaccard is)."""
    out = np.zeros(len(pairs), dtype=bool)
    cache: dict[int, np.ndarray] = {}

    def shingles(rank: int, shard: int, first: int, count: int) -> np.ndarray:
        if rank not in cache:
            rel = spill.shingle_rel(shard)
            cache[rank] = np.unique(spill.read_rows(store, rel, SHINGLE, first, first + count))
        return cache[rank]

    with_index = pairs["us"] == history.HIST_SHARD  # an index entry is always the pair's first record
    mixed = with_index & (pairs["vs"] != history.HIST_SHARD)  # two index entries: no edge, never checked
    if mixed.any():
        out[mixed] = _estimated(store, index, pairs[mixed]) >= threshold
    for k in np.flatnonzero(~with_index).tolist():
        u, v, us, uc, uo, vs, vc, vo = pairs[k].tolist()
        if len(cache) + 2 > CACHE_RECORDS and (u not in cache or v not in cache):
            cache.clear()  # never between loading u and v: both stay for this pair
        out[k] = jaccard(shingles(u, us, uo, uc), shingles(v, vs, vo, vc)) >= threshold
    return out


def _estimated(store, index: dict, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of each pair of an index entry (its stored signature) and a new record (the signature
    of its shingles), computed for all the pairs at once: each record's signature once, however many index
    entries it pairs with (the more history, the more such pairs)."""
    from pipelines.dedup.minhash import MinHasher

    mh = index["minhash"]
    hasher = MinHasher(mh["ngram"], mh["bands"], mh["rows"], mh["seed"])
    records, where = np.unique(pairs["v"], return_index=True)
    sets = [np.unique(spill.read_rows(store, spill.shingle_rel(int(pairs["vs"][i])), SHINGLE, int(pairs["vo"][i]),
                                      int(pairs["vo"][i]) + int(pairs["vc"][i]))) for i in where.tolist()]
    counts = np.array([len(x) for x in sets], np.int64)
    signatures = hasher.signatures_of_shingles(np.concatenate(sets) if sets else np.zeros(0, SHINGLE), counts)
    signatures = (signatures & np.uint64(0xFFFFFFFF)).astype(history.SIG_DTYPE)
    entries, hid = np.unique(pairs["uo"], return_inverse=True)  # an index entry's "o" is its hid
    stored = history.read_signature_rows(index["store"], index["signatures"], entries, hasher.num_perm)
    return np.mean(signatures[np.searchsorted(records, pairs["v"])] == stored[hid], axis=1)


def pair_task(job: dict) -> dict:
    """The distinct candidate pairs of one node range (those kept, verified when asked) -> component edges."""
    clock = PhaseClock()
    store = job["store"]
    with clock("read"):
        pairs = spill.read_parts(store, PAIR_DTYPE, job["parts"])
    with clock("distinct"):
        pairs = pairs[np.lexsort((pairs["v"], pairs["u"]))]
        if len(pairs):
            pairs = pairs[spill.group_starts(np.stack([pairs["u"], pairs["v"]], 1))]
    candidates = len(pairs)
    if job["threshold"] is not None and candidates:
        with clock("verify"):
            pairs = pairs[verified(store, pairs, float(job["threshold"]), job.get("index"))]
    elif len(pairs):  # unverified: an index entry's pairs are edges, two index entries' are not
        pairs = pairs[~((pairs["us"] == history.HIST_SHARD) & (pairs["vs"] == history.HIST_SHARD))]
    with clock("write"):
        offsets = write_edges(store, job["out"], pairs["u"], pairs["v"], LARGE, job["bounds"])
    return {"offsets": offsets, "candidates": candidates, "verified": len(pairs), "phases": clock.phases}
