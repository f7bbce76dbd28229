"""Global duplicate decisions from the merged key files (no texts needed, except for optional verification).

Records are linked when their exact hashes are equal (each to its group's best
ranked record) or when they share an LSH band hash (star edges to the bucket's
best ranked record: a MinHash candidate pair). Duplicate clusters are the
connected components of that graph (scipy.sparse.csgraph); each cluster keeps
its best ranked record (pipelines.dedup.keep), so the decision depends only on
the records, not on how they are sharded. Band hashes are never all in memory:
they stream slice by slice out of pipelines.dedup.spill; what is held is O(1)
numbers per record (rank, exact representative, cluster label) plus the
candidate edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipelines.dedup import spill

EXACT_DUP = "exact_dup"
NEAR_DUP = "near_dup"
DUPLICATE_URL = "duplicate_url"


@dataclass
class Decisions:
    kept_index: np.ndarray  # (n,) index of the record kept for each record's cluster (itself when kept)
    reason: np.ndarray  # (n,) object: None (kept), EXACT_DUP, DUPLICATE_URL or NEAR_DUP
    cluster_size: np.ndarray  # (n,) members of the record's cluster (1 = singleton)
    candidate_pairs: int = 0  # distinct LSH candidate pairs
    verified_pairs: int = 0  # of those, kept after Jaccard verification (== candidate_pairs when off)

    @property
    def n_clusters(self) -> int:
        """Clusters with at least two members (each has exactly one kept record)."""
        n = len(self.kept_index)
        return int(((self.kept_index == np.arange(n)) & (self.cluster_size > 1)).sum())


def check_unique_ids(ids: np.ndarray) -> None:
    sorted_ids = np.sort(ids)
    clash = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(clash):
        raise ValueError(f"dedup: record id {sorted_ids[clash[0]]!r} occurs more than once in the input "
                         f"({len(clash)} repeated ids); ids must be unique")


def _star_edges(keys: np.ndarray, idx: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges from every member of a key group to the group's best ranked member."""
    starts = spill.group_starts(keys)
    group = np.cumsum(starts) - 1
    best = np.full(int(group[-1]) + 1 if len(group) else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, group, rank[idx])
    head_rank = best[group]
    member = rank[idx] != head_rank
    # rank -> index: the head of each group is the member whose rank equals the group's best
    head_of_group = np.empty(len(best), dtype=np.int64)
    head_of_group[group[~member]] = idx[~member]
    return idx[member], head_of_group[group[member]]


def _unique_pairs(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    code = np.unique(a * n + b)
    return code // n, code % n


def decide(ids: np.ndarray, rank: np.ndarray, work: Path, offsets: np.ndarray, n_shards: int, *,
           exact: bool, bands: int, excluded: np.ndarray | None = None, chunk: int = 1 << 20,
           verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, url: bool = False) -> Decisions:
    """Decisions over the key files in ``work`` (pipelines.dedup.spill layout).

    ids/rank: (n,) for all records, global index order; offsets: first global index of each shard;
    excluded: records that take no part (e.g. dropped as contaminated); verify(src, dst) -> keep mask;
    url: also link records with equal normalised URLs (url key files).
    """
    n = len(ids)
    check_unique_ids(ids)
    nodes = np.arange(n)
    active = np.ones(n, bool) if excluded is None else ~excluded
    exact_rep = nodes.copy()
    src_parts, dst_parts = [], []
    if exact and n:
        files = [spill.exact_file(work, s) for s in range(n_shards)]
        for keys, idx in spill.merged_slices(files, offsets, chunk):
            keep = active[idx]
            s, d = _star_edges(keys[keep], idx[keep], rank)
            exact_rep[s] = d
            src_parts.append(s)
            dst_parts.append(d)
    url_rep = nodes.copy()
    if url and n:
        files = [spill.url_file(work, s) for s in range(n_shards)]
        files = [f if f.exists() else None for f in files]  # a shard without any URL writes no file
        for keys, idx in spill.merged_slices([f for f in files if f is not None],
                                             offsets[[f is not None for f in files]], chunk):
            keep = active[idx]
            s, d = _star_edges(keys[keep], idx[keep], rank)
            url_rep[s] = d
            src_parts.append(s)
            dst_parts.append(d)
    near_src = near_dst = np.zeros(0, np.int64)
    candidates = 0
    if bands and n:
        reps = active & (exact_rep == nodes)  # exact copies follow their representative
        for b in range(bands):
            files = [spill.band_file(work, s, b) for s in range(n_shards)]
            for keys, idx in spill.merged_slices(files, offsets, chunk):
                keep = reps[idx]
                s, d = _star_edges(keys[keep], idx[keep], rank)
                near_src, near_dst = np.r_[near_src, s], np.r_[near_dst, d]
            near_src, near_dst = _unique_pairs(near_src, near_dst, n)  # bands repeat the same pairs
        candidates = len(near_src)
        if verify is not None and candidates:
            ok = verify(near_src, near_dst)
            near_src, near_dst = near_src[ok], near_dst[ok]
    src = np.concatenate(src_parts + [near_src]) if n else np.zeros(0, np.int64)
    dst = np.concatenate(dst_parts + [near_dst]) if n else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    n_comp, label = connected_components(graph, directed=False)

    keep_rank = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(keep_rank, label, rank)
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = nodes
    kept_index = by_rank[keep_rank[label]] if n else nodes
    size = np.bincount(label, minlength=n_comp)[label] if n else nodes
    reason = np.full(n, None, dtype=object)
    dropped = kept_index != nodes
    # A verbatim copy of another record is an exact dup; else one whose URL another record has is a URL dup;
    # any other dropped record is a near dup.
    reason[dropped & (exact_rep != nodes)] = EXACT_DUP
    reason[dropped & (exact_rep == nodes) & (url_rep != nodes)] = DUPLICATE_URL
    reason[dropped & (exact_rep == nodes) & (url_rep == nodes)] = NEAR_DUP
    return Decisions(kept_index=kept_index, reason=reason, cluster_size=size,
                     candidate_pairs=candidates, verified_pairs=len(near_src))
