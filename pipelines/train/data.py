"""Batches from packed sequences: seeded order, next-token targets, per-document positions and mask.

A packed sequence holds several document pieces. Each piece is trained on as if
it were alone: its positions restart at 0, its tokens attend only to earlier
tokens of the same piece (block-diagonal causal mask), and the first token of a
piece is not a target (predicting it would need another document's context).
Padding is never a target, nor is a token the pack's loss mask marks no-loss.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from pipelines.pack.format import PackedDataset, PackedSequence

IGNORE = -100  # the label torch's cross-entropy skips


def sequence_order(n_seq: int, seed: int, position: int) -> int:
    """Index of the ``position``-th sequence drawn: a fresh seeded permutation per epoch.

    Stateless in ``position``, so a resumed run continues exactly where it stopped.
    """
    epoch, offset = divmod(position, n_seq)
    return int(_permutation(n_seq, seed, epoch)[offset])


@lru_cache(maxsize=2)
def _permutation(n_seq: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_seq)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] long
    labels: torch.Tensor  # [B, L] long: the target predicted *at* each position, IGNORE where none
    position_ids: torch.Tensor  # [B, L] long, 0 at every document start
    attention_mask: torch.Tensor | None  # [B, 1, L, L] bool, True = may attend (None: see segment_ids)
    n_tokens: int  # non-padding input tokens
    n_targets: int  # positions that carry a target
    segment_ids: torch.Tensor | None = None  # [B, L] long: document piece per position (for flex attention)

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.position_ids),
                     move(self.attention_mask), self.n_tokens, self.n_targets, move(self.segment_ids))


def segments(seq: PackedSequence) -> np.ndarray:
    """Segment id per position: one per document piece; the padding tail is its own segment."""
    length = len(seq.tokens)
    starts = np.zeros(length, dtype=np.int64)
    starts[np.asarray(seq.doc_starts, dtype=np.int64)] = 1
    starts[0] = 1
    if seq.n_real < length:
        starts[seq.n_real] = 1
    return np.cumsum(starts) - 1


def encode_sequence(seq: PackedSequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, labels, position_ids, segment ids) of one packed sequence."""
    tokens = np.asarray(seq.tokens, dtype=np.int64)
    length = len(tokens)
    seg = segments(seq)
    first = np.r_[0, np.flatnonzero(np.diff(seg)) + 1]  # first position of each segment
    positions = np.arange(length) - first[seg]
    labels = np.full(length, IGNORE, dtype=np.int64)
    nxt = np.arange(1, length)
    # Position t predicts token t+1 when both are real and in the same document piece.
    ok = (nxt < seq.n_real) & (seg[nxt] == seg[:-1])
    if seq.loss_mask is not None:  # no-loss tokens (MeCo's URL prefix) are context, never targets
        ok &= np.asarray(seq.loss_mask[1:], dtype=bool)
    labels[:-1][ok] = tokens[1:][ok]
    return tokens, labels, positions, seg


def make_batch(sequences: list[PackedSequence], dense_mask: bool = True) -> Batch:
    """``dense_mask=False`` skips the [B, 1, L, L] mask (the GPU path builds a flex BlockMask from segment_ids)."""
    ids, labels, pos, segs = zip(*(encode_sequence(s) for s in sequences))
    seg = torch.from_numpy(np.stack(segs))
    length = seg.shape[1]
    mask = None
    if dense_mask:
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = (seg[:, :, None] == seg[:, None, :]) & causal
    labels_t = torch.from_numpy(np.stack(labels))
    return Batch(
        input_ids=torch.from_numpy(np.stack(ids)),
        labels=labels_t,
        position_ids=torch.from_numpy(np.stack(pos)),
        attention_mask=None if mask is None else mask[:, None],
        n_tokens=int(sum(s.n_real for s in sequences)),
        n_targets=int((labels_t != IGNORE).sum()),
        segment_ids=seg,
    )


def whole(seq: PackedSequence) -> PackedSequence:
    """``train.cross_document_attention``: the sequence's documents as one stream (the classic causal LM: a
    token attends to every earlier token of the sequence, positions run on, the token after an EOS is a
    target). The padding tail stays its own segment."""
    return dataclasses.replace(seq, doc_starts=np.asarray(seq.doc_starts[:1], dtype=np.asarray(seq.doc_starts).dtype))


class BatchStream:
    """Micro-batches of ``micro_batch`` sequences in seeded order from ``position`` on.

    With ``world`` ranks, each draw takes ``world * micro_batch`` sequences of the global
    order and rank r keeps the r-th slice of ``micro_batch``; ``position`` counts the
    global order, so it is the same on every rank, and W ranks x m sequences cover exactly
    what 1 rank x W*m covers (the same step, the same data, any world size).
    """

    def __init__(self, dataset: PackedDataset, micro_batch: int, seed: int, position: int = 0,
                 dense_mask: bool = True, rank: int = 0, world: int = 1, cross_document: bool = False):
        if len(dataset) == 0:
            raise ValueError(f"packed data {dataset.dir} holds no sequences")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        self.dataset, self.micro_batch, self.seed, self.position = dataset, micro_batch, seed, position
        self.dense_mask, self.rank, self.world = dense_mask, rank, world
        self.cross_document = cross_document

    def next(self) -> Batch:
        n = len(self.dataset)
        first = self.position + self.rank * self.micro_batch
        seqs = [self.dataset[sequence_order(n, self.seed, first + i)] for i in range(self.micro_batch)]
        self.position += self.world * self.micro_batch
        if self.cross_document:
            seqs = [whole(s) for s in seqs]
        return make_batch(seqs, dense_mask=self.dense_mask)
