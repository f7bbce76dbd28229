"""Packing document pieces into fixed-length sequences.

``best_fit_decreasing``: pieces sorted by length (longest first), each put into
the open sequence with the least remaining room that still fits it, else a new
sequence. Remaining capacities are integers in ``1..seq_len-1``, so open
sequences are bucketed by capacity and the distinct capacities kept in a sorted
list: a placement is one ``bisect`` over at most ``seq_len`` values.

``concat``: documents back to back in input order, cut every ``seq_len`` tokens
(the classic concatenate-and-split; cuts documents at arbitrary points).

Both return a ``Placement``: for every piece its sequence and offset in it.
"""
from __future__ import annotations

import bisect
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


def best_fit_decreasing(pieces: Pieces, seq_len: int) -> Placement:
    if len(pieces) and pieces.length.max() > seq_len:
        raise ValueError(f"a piece is longer than seq_len={seq_len}: split documents first")
    order = np.argsort(-pieces.length, kind="stable")  # ties keep input order: deterministic
    seq = np.empty(len(pieces), dtype=np.int64)
    start = np.empty(len(pieces), dtype=np.int64)
    used: list[int] = []  # tokens used per sequence
    caps: list[int] = []  # sorted distinct remaining capacities that have an open sequence
    open_at: dict[int, list[int]] = {}  # capacity -> open sequences with exactly that room
    for p in order.tolist():
        n = int(pieces.length[p])
        i = bisect.bisect_left(caps, n)
        if i == len(caps):
            s = len(used)
            used.append(0)
            room = seq_len
        else:
            room = caps[i]
            bucket = open_at[room]
            s = bucket.pop()
            if not bucket:
                del open_at[room]
                del caps[i]
        seq[p] = s
        start[p] = used[s]
        used[s] += n
        room -= n
        if room > 0:
            bucket = open_at.get(room)
            if bucket is None:
                open_at[room] = bucket = []
                bisect.insort(caps, room)
            bucket.append(s)
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
