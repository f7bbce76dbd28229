"""Global duplicate decisions from per-record hashes (no texts needed).

Records are linked when their exact hashes are equal or when they share any
LSH band hash (a MinHash candidate pair); duplicate clusters are the connected
components of that graph. Each cluster keeps its record with the smallest id,
so the decision depends only on the records, not on how they are sharded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

EXACT_DUP = "exact_dup"
NEAR_DUP = "near_dup"


@dataclass
class Decisions:
    ids: np.ndarray  # (n,) record ids, input order
    kept_index: np.ndarray  # (n,) index of the record kept for each record's cluster (itself when kept)
    reason: np.ndarray  # (n,) object: None (kept), EXACT_DUP or NEAR_DUP
    cluster_size: np.ndarray  # (n,) members of the record's cluster (1 = singleton)

    @property
    def n_clusters(self) -> int:
        """Clusters with at least two members (each has exactly one kept record)."""
        return int(((self.kept_index == np.arange(len(self.ids))) & (self.cluster_size > 1)).sum())


def _equal_key_edges(keys: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges chaining together the nodes that share a key (a chain suffices for connectivity)."""
    if keys.ndim == 2:  # rows as keys (128-bit hashes): lexicographic order
        order = np.lexsort(keys.T[::-1])
        same = (keys[order[1:]] == keys[order[:-1]]).all(axis=1)
    else:
        order = np.argsort(keys, kind="stable")
        same = keys[order[1:]] == keys[order[:-1]]
    return nodes[order[:-1][same]], nodes[order[1:][same]]


def decide(ids: np.ndarray, exact: np.ndarray | None, bands: np.ndarray | None) -> Decisions:
    """Duplicate decisions for all records. ``exact``: (n, 2) uint64 or None; ``bands``: (n, B) uint64 or None."""
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    clash = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(clash):
        raise ValueError(f"dedup: record id {sorted_ids[clash[0]]!r} occurs more than once in the input "
                         f"({len(clash)} repeated ids); ids must be unique")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    nodes = np.arange(n)

    # Exact groups: each record points at the smallest-id record with the same normalised text.
    exact_rep = nodes.copy()
    src, dst = [], []
    if exact is not None and n:
        _, group = np.unique(exact, axis=0, return_inverse=True)
        group = group.reshape(-1)
        first_rank = np.full(group.max() + 1, n, dtype=np.int64)
        np.minimum.at(first_rank, group, rank)
        exact_rep = order[first_rank[group]]
        src.append(nodes[exact_rep != nodes])
        dst.append(exact_rep[exact_rep != nodes])
    # LSH candidates among exact representatives: records sharing a band hash in the same band.
    if bands is not None and n:
        reps = np.flatnonzero(exact_rep == nodes)
        for b in range(bands.shape[1]):
            s, d = _equal_key_edges(bands[reps, b], reps)
            src.append(s)
            dst.append(d)
    if src:
        src, dst = np.concatenate(src), np.concatenate(dst)
    else:
        src = dst = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    n_comp, label = connected_components(graph, directed=False)

    keep_rank = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(keep_rank, label, rank)
    kept_index = order[keep_rank[label]]
    size = np.bincount(label, minlength=n_comp)[label]
    reason = np.full(n, None, dtype=object)
    dropped = kept_index != nodes
    # A verbatim copy of an earlier record is an exact dup; a dropped exact representative is a near dup.
    reason[dropped & (exact_rep != nodes)] = EXACT_DUP
    reason[dropped & (exact_rep == nodes)] = NEAR_DUP
    return Decisions(ids=ids, kept_index=kept_index, reason=reason, cluster_size=size)
