"""Packing document pieces into fixed-length sequences.

``best_fit_decreasing``: pieces sorted by length (longest first), each put into
the open sequence with the least remaining room that still fits it, else a new
sequence. Remaining capacities are integers in ``1..seq_len-1``, so open
sequences are bucketed by capacity (a stack per capacity) and a segment tree
over the capacities ``0..seq_len`` counts the open sequences under each node:
"smallest capacity >= n with an open sequence" and each update are
``O(log seq_len)``, the whole packing ``O(n log n)`` (the sort dominates).

``concat``: documents back to back in input order, cut every ``seq_len`` tokens
(the classic concatenate-and-split; cuts documents at arbitrary points).

Both return a ``Placement``: for every piece its sequence and offset in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pieces:
    """Document pieces: ``doc`` (row index), ``offset`` into the document's tokens, ``length``."""
    doc: np.ndarray
    offset: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.length)


@dataclass
class Placement:
    pieces: Pieces
    seq: np.ndarray  # sequence of each piece
    start: np.ndarray  # token offset of each piece inside its sequence
    n_seq: int


def split_documents(doc_lengths: np.ndarray, seq_len: int) -> Pieces:
    """Documents longer than ``seq_len`` become ``seq_len`` chunks plus the remainder; others stay whole."""
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    if (doc_lengths < 1).any():
        raise ValueError("every document needs at least one token (its EOS)")
    n_pieces = -(-doc_lengths // seq_len)  # ceil
    doc = np.repeat(np.arange(len(doc_lengths), dtype=np.int64), n_pieces)
    first = np.cumsum(n_pieces) - n_pieces
    k = np.arange(len(doc), dtype=np.int64) - np.repeat(first, n_pieces)  # chunk number inside its document
    offset = k * seq_len
    length = np.minimum(seq_len, doc_lengths[doc] - offset)
    return Pieces(doc=doc, offset=offset, length=length)


class CapacityTree:
    """Counts of open sequences per remaining capacity ``0..seq_len``, with a leftmost-nonzero query."""

    def __init__(self, seq_len: int):
        self.size = 1 << (seq_len + 1).bit_length()
        self.count = [0] * (2 * self.size)

    def add(self, capacity: int, delta: int) -> None:
        i = capacity + self.size
        while i:
            self.count[i] += delta
            i >>= 1

    def smallest_at_least(self, n: int) -> int:
        """The smallest capacity >= ``n`` with an open sequence, or -1."""
        count, i = self.count, n + self.size
        if count[i]:
            return n
        while i > 1:  # climb until a right sibling holds something
            if not i & 1 and count[i + 1]:
                i += 1
                break
            i >>= 1
        else:
            return -1
        while i < self.size:  # descend to its leftmost non-empty leaf
            i = 2 * i if count[2 * i] else 2 * i + 1
        return i - self.size


def best_fit_decreasing(pieces: Pieces, seq_len: int) -> Placement:
    if len(pieces) and pieces.length.max() > seq_len:
        raise ValueError(f"a piece is longer than seq_len={seq_len}: split documents first")
    order = np.argsort(-pieces.length, kind="stable")  # ties keep input order: deterministic
    seq = np.empty(len(pieces), dtype=np.int64)
    start = np.empty(len(pieces), dtype=np.int64)
    used: list[int] = []  # tokens used per sequence
    tree = CapacityTree(seq_len)
    open_at: list[list[int]] = [[] for _ in range(seq_len + 1)]  # capacity -> open sequences with that room
    for p, n in zip(order.tolist(), pieces.length[order].tolist()):
        room = tree.smallest_at_least(n)
        if room < 0:
            s = len(used)
            used.append(0)
            room = seq_len
        else:
            s = open_at[room].pop()
            tree.add(room, -1)
        seq[p] = s
        start[p] = used[s]
        used[s] += n
        room -= n
        if room > 0:
            open_at[room].append(s)
            tree.add(room, 1)
    return Placement(pieces=pieces, seq=seq, start=start, n_seq=len(used))


def concat_split(doc_lengths: np.ndarray, seq_len: int) -> Placement:
    """Concatenate documents in order and cut the stream every ``seq_len`` tokens."""
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    doc_begin = np.cumsum(doc_lengths) - doc_lengths  # stream offset of each document
    total = int(doc_lengths.sum())
    # Piece boundaries: every document start and every multiple of seq_len.
    cuts = np.union1d(doc_begin, np.arange(0, total, seq_len))
    ends = np.append(cuts[1:], total)
    doc = np.searchsorted(doc_begin, cuts, side="right") - 1
    # Zero-length documents cannot occur (each has its EOS), so every piece is non-empty.
    pieces = Pieces(doc=doc.astype(np.int64), offset=(cuts - doc_begin[doc]).astype(np.int64),
                    length=(ends - cuts).astype(np.int64))
    return Placement(pieces=pieces, seq=(cuts // seq_len).astype(np.int64), start=(cuts % seq_len).astype(np.int64),
                     n_seq=-(-total // seq_len))
