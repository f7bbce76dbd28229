"""``pack.order: related``: In-Context Pretraining (Shi et al. 2023, arXiv:2310.10638) for phase 1.

ICP puts related documents next to each other so a sequence's later documents can use its earlier
ones as context: embed every document, build a k-nearest-neighbour graph, and walk it greedily (an
approximate maximum travelling-salesman path) so that each document is followed by its most similar
not-yet-visited neighbour; then pack in that order.

Here, at corpus scale and with the driver holding no texts:

- **Embedding** (in the encode tasks, ``signature``): a 64-bit SimHash of the document's hashed,
  sublinearly weighted bag of words (words of >= 4 letters, lower-cased: a crude stop-word cut).
  The Hamming distance of two signatures estimates the angle between the two bags of words; one
  ``uint64`` per row is all that reaches the driver (8 bytes a document, beside its length).
- **kNN graph** (``neighbours``): no O(n^2). The signatures are sorted under ``PERMUTATIONS``
  seeded bit permutations (Charikar's / Manku et al.'s sorted-permutation search); a document's
  candidates are the ``WINDOW`` signatures on each side of it in each order, and its neighbours are
  the ``K`` candidates nearest in Hamming distance (copies of the same record are never each other's
  neighbour: the paper removes near-duplicates instead, and an upsampled copy next to itself teaches
  copying). Cost: O(P n log n) to sort plus O(n P W) distance computations, vectorised.
- **Traversal** (``traverse``): from the first document (row order), repeatedly step to the nearest
  unvisited neighbour; at a dead end, jump to the next unvisited document of the first sorted order
  (the one nearest in that order to where the walk stopped), so jumps also land near. O(n K).
- **Packing** (``windowed_best_fit``): pieces in traversal order, each put right after the previous
  piece when it fits there, else into the open sequence with the least room that still fits it among
  the ``OPEN`` most recently opened ones, else into a new sequence. O(n OPEN). Documents stay whole (as ``best_fit``), consecutive documents share a sequence or sit in
  sequences opened just before or after, and the fill stays close to best-fit-decreasing's. With
  ``packing: concat`` the traversal order is concatenated and cut (the paper's own packing).

Everything is a function of the row order and the texts: deterministic on re-run and executor.
"""
from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from pipelines.pack.binpack import Pieces, Placement, split_documents

BITS = 64
K = 8  # neighbours per document
WINDOW = 8  # candidates on each side in each sorted order
PERMUTATIONS = 4  # sorted orders (seeded bit permutations of the signature)
OPEN = 16  # open sequences the windowed best fit may still add to
_SEED = 20231016  # the permutations' seed: part of the definition of the order, not a knob
WORD = re.compile(r"[^\W\d_]{4,}", re.UNICODE)


def signature(text: str) -> int:
    """64-bit SimHash of ``text``'s bag of words (weight 1 + log tf), as an unsigned int."""
    counts: dict[str, int] = {}
    for w in WORD.findall(text.lower()):
        counts[w] = counts.get(w, 0) + 1
    if not counts:
        return 0
    words = sorted(counts)
    hashes = np.frombuffer(b"".join(hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                                    for w in words), dtype="<u8")
    weights = 1.0 + np.log(np.asarray([counts[w] for w in words], dtype=np.float64))
    bits = (hashes[:, None] >> np.arange(BITS, dtype=np.uint64)) & np.uint64(1)
    total = ((bits.astype(np.float64) * 2.0 - 1.0) * weights[:, None]).sum(axis=0)
    return int(((total > 0).astype(np.uint64) << np.arange(BITS, dtype=np.uint64)).sum())


def signatures(texts: list[str]) -> np.ndarray:
    return np.asarray([signature(t) for t in texts], dtype=np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (vectorised)."""
    x = np.asarray(x, dtype=np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1).astype(np.int64)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - Hamming/64 of two signature arrays (1: same bag of words; ~0.5: unrelated)."""
    return 1.0 - popcount(np.bitwise_xor(a, b)) / BITS


def _permuted(sig: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``sig`` with its bits reordered by ``perm`` (bit i of the result is bit perm[i] of the input)."""
    out = np.zeros(len(sig), dtype=np.uint64)
    for i, src in enumerate(perm.tolist()):
        out |= ((sig >> np.uint64(src)) & np.uint64(1)) << np.uint64(i)
    return out


def sorted_orders(sig: np.ndarray) -> list[np.ndarray]:
    """Row indices sorted by each seeded bit permutation of the signatures (ties: row order)."""
    rng = np.random.default_rng(_SEED)
    orders = []
    for p in range(PERMUTATIONS):
        perm = np.arange(BITS) if p == 0 else rng.permutation(BITS)
        orders.append(np.lexsort((np.arange(len(sig)), _permuted(sig, perm))))
    return orders


def neighbours(sig: np.ndarray, group: np.ndarray, orders: list[np.ndarray]) -> np.ndarray:
    """[n, K] approximate nearest neighbours (row indices, nearest first; -1 where fewer were found).
    ``group``: rows with the same group (copies of one record) are never neighbours."""
    n = len(sig)
    if n == 0:
        return np.zeros((0, K), np.int64)
    cand = []
    for order in orders:
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        for d in range(1, WINDOW + 1):
            for s in (-d, d):
                r = rank + s
                ok = (r >= 0) & (r < n)
                cand.append(np.where(ok, order[np.clip(r, 0, n - 1)], -1))
    cand = np.stack(cand, axis=1)  # [n, C]
    rows = np.arange(n)[:, None]
    valid = (cand >= 0) & (group[np.maximum(cand, 0)] != group[rows])
    dist = np.where(valid, popcount(np.bitwise_xor(sig[rows], sig[np.maximum(cand, 0)])), BITS + 1)
    # Deduplicate candidates (one seen in several orders), then nearest first, ties by row index.
    key = dist * (n + 1) + np.where(valid, cand, n)
    key.sort(axis=1)
    first = np.ones_like(key, dtype=bool)
    first[:, 1:] = key[:, 1:] != key[:, :-1]
    key = np.where(first, key, np.iinfo(np.int64).max)
    key.sort(axis=1)
    out = key[:, :K] % (n + 1)
    return np.where((key[:, :K] < (BITS + 1) * (n + 1)) & (out < n), out, -1)


def traverse(sig: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The ICP order of the rows: a greedy walk of the kNN graph (each row once)."""
    n = len(sig)
    if n == 0:
        return np.zeros(0, np.int64)
    orders = sorted_orders(sig)
    nbr = neighbours(sig, group, orders).tolist()
    fallback = orders[0].tolist()
    rank0 = np.empty(n, np.int64)
    rank0[orders[0]] = np.arange(n)
    rank0 = rank0.tolist()
    visited = bytearray(n)
    path = []
    cursor = 0  # position in ``fallback`` before which every row is visited
    cur = 0
    for _ in range(n):
        visited[cur] = 1
        path.append(cur)
        nxt = next((j for j in nbr[cur] if j >= 0 and not visited[j]), -1)
        if nxt < 0:  # dead end: the nearest unvisited row after the current one in the first sorted order
            r = rank0[cur] + 1
            while r < n and visited[fallback[r]]:
                r += 1
            if r >= n:
                while cursor < n and visited[fallback[cursor]]:
                    cursor += 1
                r = cursor
            if r >= n:
                break
            nxt = fallback[r]
        cur = nxt
    return np.asarray(path, dtype=np.int64)


def windowed_best_fit(doc_lengths: np.ndarray, order: np.ndarray, seq_len: int) -> Placement:
    """Documents (split into ``seq_len`` pieces when longer) in ``order``; each piece after the previous piece
    when it fits, else into the fullest of the last ``OPEN`` opened sequences that still fits it, else a new one."""
    pieces = split_documents(doc_lengths, seq_len)
    rank = np.empty(len(doc_lengths), np.int64)
    rank[order] = np.arange(len(order))
    by = np.lexsort((pieces.offset, rank[pieces.doc]))  # traversal order, a document's pieces in order
    pieces = Pieces(doc=pieces.doc[by], offset=pieces.offset[by], length=pieces.length[by])
    seq = np.empty(len(pieces), np.int64)
    start = np.empty(len(pieces), np.int64)
    used: list[int] = []
    open_: list[int] = []  # sequence ids with room, oldest first (at most OPEN)
    last = -1  # the sequence of the previous piece
    for p, n in enumerate(pieces.length.tolist()):
        best, best_room = -1, seq_len + 1
        if last >= 0 and used[last] + n <= seq_len:  # right after its predecessor when it fits
            best = last
        for s in open_ if best < 0 else ():
            room = seq_len - used[s]
            if n <= room < best_room:
                best, best_room = s, room
        if best < 0:
            best = len(used)
            used.append(0)
            open_.append(best)
            if len(open_) > OPEN:
                open_.pop(0)
        seq[p], start[p] = best, used[best]
        used[best] += n
        last = best
        if used[best] == seq_len:
            open_.remove(best)
    return Placement(pieces=pieces, seq=seq, start=start, n_seq=len(used))


def adjacent_similarity(sig: np.ndarray, placement: Placement) -> float:
    """Mean signature similarity of consecutive document pieces inside a sequence (nan if none)."""
    pieces = placement.pieces
    o = np.lexsort((placement.start, placement.seq))
    s, d = placement.seq[o], pieces.doc[o]
    same = s[1:] == s[:-1]
    if not same.any():
        return math.nan
    return float(similarity(sig[d[1:][same]], sig[d[:-1][same]]).mean())
