"""From per-row token counts to sequences: placement, the seeded sequence shuffle, the output shards.

The driver packs lengths only (``binpack``): for every piece its row, offset, length, sequence
and start. Sequences are shuffled by a seeded permutation and cut into token shards of
``max_seq`` sequences; each token shard is one task that copies its pieces' tokens out of the
scratch files the encoding tasks wrote (``write_token_shard``). The lineage (one row per
piece) and the phase summary come from the same arrays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.pack.binpack import Placement, best_fit_decreasing, concat_split, split_documents
from pipelines.pack.format import write_packed_shard
from pipelines.pack.related import traverse, windowed_best_fit


class Rows:
    """One phase's rows (documents, repeats included), concatenated over its input shards in order."""

    def __init__(self, parts: list[dict]):
        self.ids = [i for p in parts for i in p["ids"]]
        self.sources = [s for p in parts for s in p["sources"]]
        self.copies = [c for p in parts for c in p["copies"]]
        cat = lambda key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0, np.int64)  # noqa: E731
        self.begin, self.length, self.prefix_length = cat("begin"), cat("length"), cat("prefix")
        # pack.order: related only: each row's SimHash signature (pipelines/pack/related.py)
        self.signature = np.concatenate([p["signature"] for p in parts]) \
            if parts and all("signature" in p for p in parts) else None
        self.shard = np.repeat(np.arange(len(parts)), [len(p["ids"]) for p in parts])  # input shard of each row


def place(rows: Rows, seq_len: int, packing: str, order: str = "input") -> Placement:
    if order == "related":
        return place_related(rows, seq_len, packing)
    if packing == "concat":
        return concat_split(rows.length, seq_len)
    return best_fit_decreasing(split_documents(rows.length, seq_len), seq_len)


def related_order(rows: Rows) -> np.ndarray:
    """The In-Context Pretraining order of the rows (copies of one record form one group)."""
    if rows.signature is None:
        raise ValueError("pack.order: related needs the rows' signatures (encode_shard with related=True)")
    group_of: dict[str, int] = {}
    group = np.asarray([group_of.setdefault(i, len(group_of)) for i in rows.ids], dtype=np.int64)
    return traverse(rows.signature, group)


def place_related(rows: Rows, seq_len: int, packing: str) -> Placement:
    """Pieces in the ICP traversal order: concatenated and cut (``concat``) or a windowed best fit."""
    order = related_order(rows)
    if packing == "concat":
        placement = concat_split(rows.length[order], seq_len)
        placement.pieces.doc = order[placement.pieces.doc]
        return placement
    return windowed_best_fit(rows.length, order, seq_len)


def shuffled_sequences(placement: Placement, shuffle_seed: int, phase_number: int) -> np.ndarray:
    """The output position of every piece's sequence (a seeded permutation of whole sequences)."""
    perm = np.random.default_rng([shuffle_seed, phase_number]).permutation(placement.n_seq)
    position = np.empty(placement.n_seq, dtype=np.int64)
    position[perm] = np.arange(placement.n_seq)
    return position[placement.seq] if len(placement.pieces) else np.zeros(0, np.int64)


def shard_contexts(rows: Rows, placement: Placement, seq: np.ndarray, max_seq: int, meco: bool,
                   token_files: list[str]) -> list[dict]:
    """Per token shard: its sequences' pieces (sequence, start, length, where the tokens are) in
    (sequence, start) order, and how many of each piece's tokens are a no-loss prefix."""
    pieces = placement.pieces
    order = np.lexsort((placement.start, seq))  # pieces by (sequence, start)
    seq_o, start_o = seq[order], placement.start[order]
    doc = pieces.doc[order]
    no_loss = np.clip(rows.prefix_length[doc] - pieces.offset[order], 0, pieces.length[order]) if meco else None
    n_shards = max(1, -(-placement.n_seq // max_seq))
    bounds = np.searchsorted(seq_o, np.arange(n_shards + 1) * max_seq)
    out = []
    for k in range(n_shards):
        sl = slice(int(bounds[k]), int(bounds[k + 1]))
        shard_of_piece = rows.shard[doc[sl]]
        files = sorted(set(shard_of_piece.tolist()))
        out.append({
            "n_seq": int(min(max_seq, placement.n_seq - k * max_seq)) if placement.n_seq else 0,
            "first_seq": k * max_seq,
            "seq": seq_o[sl], "start": start_o[sl], "length": pieces.length[order][sl],
            "source": (rows.begin[doc[sl]] + pieces.offset[order][sl]), "file": shard_of_piece,
            "files": {s: token_files[s] for s in files},
            "no_loss": no_loss[sl] if no_loss is not None else None,
        })
    return out


def write_token_shard(ctx: dict, shard_index: int, seq_len: int, dtype: np.dtype, pad_id: int,
                      out_dir: Path, fetch) -> dict:
    """Build one token shard's arrays from the scratch token files and write its .npy files to ``out_dir``."""
    n_seq = ctx["n_seq"]
    tokens = np.full((n_seq, seq_len), pad_id, dtype=dtype)
    flat = {s: np.load(fetch(uri), mmap_mode="r") for s, uri in ctx["files"].items()}
    local = ctx["seq"] - ctx["first_seq"]
    for s, st, f, a, n in zip(local.tolist(), ctx["start"].tolist(), ctx["file"].tolist(), ctx["source"].tolist(),
                              ctx["length"].tolist()):
        tokens[s, st:st + n] = flat[f][a:a + n]
    loss_mask = None
    if ctx["no_loss"] is not None:
        loss_mask = np.ones((n_seq, seq_len), dtype=np.uint8)
        for s, st, n in zip(local.tolist(), ctx["start"].tolist(), ctx["no_loss"].tolist()):
            if n > 0:
                loss_mask[s, st:st + n] = 0
    bounds = np.searchsorted(local, np.arange(n_seq + 1))
    starts = ctx["start"].tolist()
    doc_starts = [starts[bounds[i]:bounds[i + 1]] for i in range(n_seq)]
    return write_packed_shard(out_dir, shard_index, tokens, doc_starts, loss_mask)


def lineage_table(rows: Rows, placement: Placement, seq: np.ndarray) -> pa.Table:
    """One row per piece, in (sequence, start) order: which record and copy, and where it sits."""
    pieces = placement.pieces
    order = np.lexsort((placement.start, seq))
    doc_of = pieces.doc[order]
    start_o = placement.start[order]
    return pa.table({
        "seq": pa.array(seq[order], pa.int64()),
        "record_id": pa.array([rows.ids[d] for d in doc_of.tolist()], pa.string()),
        "source": pa.array([rows.sources[d] for d in doc_of.tolist()], pa.string()),
        "start": pa.array(start_o, pa.int32()),
        "end": pa.array(start_o + pieces.length[order], pa.int32()),
        # Additions to the contract: which copy of the record, and where the piece sits in its document.
        "blend_copy": pa.array([rows.copies[d] for d in doc_of.tolist()], pa.int32()),
        "doc_offset": pa.array(pieces.offset[order], pa.int64()),
        "doc_tokens": pa.array(rows.length[doc_of], pa.int64()),
        "prefix_tokens": pa.array(rows.prefix_length[doc_of], pa.int64()),  # MeCo prefix (no-loss), 0 without
    })


def phase_summary(rows: Rows, placement: Placement, seq_len: int, meco: bool) -> dict:
    pieces, n_seq = placement.pieces, placement.n_seq
    n_tokens = int(pieces.length.sum())
    tokens_in = int(rows.length.sum())
    if n_tokens != tokens_in:
        raise AssertionError(f"pack: tokens in {tokens_in} != tokens packed {n_tokens}")
    per_source: dict[str, int] = {}
    for d, n in zip(pieces.doc.tolist(), pieces.length.tolist()):
        per_source[rows.sources[d]] = per_source.get(rows.sources[d], 0) + n
    no_loss = 0
    if meco:
        no_loss = int(np.clip(rows.prefix_length[pieces.doc] - pieces.offset, 0, pieces.length).sum())
    return {
        "n_seq": n_seq, "seq_len": seq_len, "tokens": n_tokens, "padding": n_seq * seq_len - n_tokens,
        "fill_ratio": n_tokens / (n_seq * seq_len) if n_seq else 0.0,
        "docs": len(rows.ids), "unique_docs": len(set(rows.ids)), "pieces": len(pieces),
        "docs_split": int((np.bincount(pieces.doc, minlength=len(rows.ids)) > 1).sum()),
        "docs_longer_than_seq_len": int((rows.length > seq_len).sum()),
        "no_loss_tokens": no_loss,
        "token_share": {s: n / n_tokens for s, n in sorted(per_source.items())} if n_tokens else {},
        "tokens_by_source": dict(sorted(per_source.items())),
    }
