"""The packed-token format: the contract between `pack` and the trainer/evaluator.

A phase directory (``data/pack/phase1``) holds:

- ``index.json``: ``seq_len``, ``dtype``, ``vocab_size``, ``eos_id``, ``pad_id``,
  ``n_seq``, ``tokens`` (non-padding), ``padding``, and ``shards``: a list of
  ``{"tokens": ..., "doc_starts": ..., "doc_index": ..., "n_seq": ...}``.
- ``tokens-XXXXX.npy``: ``[n_seq, seq_len]`` uint16 (uint32 when the vocab does not fit),
  memory-mappable with ``np.load(mmap_mode="r")``.
- ``doc_starts-XXXXX.npy`` (int32, flat) and ``doc_index-XXXXX.npy`` (int64, n_seq + 1):
  the document pieces of sequence ``i`` start at
  ``doc_starts[doc_index[i]:doc_index[i+1]]`` (position 0 always included); a
  piece runs to the next start or to the end of the non-padding tokens.
  Padding (``pad_id``) fills the tail of a sequence and is never a target.
- ``loss_mask-XXXXX.npy`` (optional, listed as ``"loss_mask"`` in the shard
  entry; ``index.json`` has ``"meco": true``): uint8 ``[n_seq, seq_len]``, 0 where
  a token must not be a target (MeCo's ``URL: <domain>`` prefix), 1 elsewhere.
  Such tokens are still inputs (the document is conditioned on them); the trainer
  sets the label *predicting* them to ignore. Absent = every token may be a target.
- ``lineage.parquet``: one row per piece: ``seq``, ``record_id``, ``source``,
  ``start``, ``end`` (token offsets inside the sequence, end exclusive); pack
  adds ``blend_copy``, ``doc_offset`` (where the piece starts in its document's
  tokens), ``doc_tokens`` (the document's tokens, EOS and prefix included) and
  ``prefix_tokens`` (its no-loss prefix, 0 without MeCo).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.atomic import atomic_path, write_json_atomic
from pipelines.core.store import fetch_uri

INDEX = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def write_packed_shard(phase_dir: Path, shard_index: int, tokens: np.ndarray, doc_starts: list[list[int]],
                       loss_mask: np.ndarray | None = None) -> dict:
    """Write one shard: tokens [n_seq, seq_len], the per-sequence document starts, optionally the loss mask."""
    phase_dir = Path(phase_dir)
    if tokens.ndim != 2 or tokens.shape[0] != len(doc_starts):
        raise ValueError(f"tokens {tokens.shape} and doc_starts ({len(doc_starts)}) disagree")
    flat = np.fromiter((s for starts in doc_starts for s in starts), dtype=np.int32)
    index = np.zeros(len(doc_starts) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in doc_starts], out=index[1:])
    names = {k: f"{k}-{shard_index:05d}.npy" for k in ("tokens", "doc_starts", "doc_index")}
    if loss_mask is not None:
        if loss_mask.shape != tokens.shape:
            raise ValueError(f"loss_mask {loss_mask.shape} and tokens {tokens.shape} disagree")
        names["loss_mask"] = f"loss_mask-{shard_index:05d}.npy"
        save_npy_atomic(phase_dir / names["loss_mask"], loss_mask.astype(np.uint8))
    save_npy_atomic(phase_dir / names["tokens"], tokens)
    save_npy_atomic(phase_dir / names["doc_starts"], flat)
    save_npy_atomic(phase_dir / names["doc_index"], index)
    return {**names, "n_seq": int(tokens.shape[0])}


def write_index(phase_dir: Path, index: dict) -> None:
    write_json_atomic(Path(phase_dir) / INDEX, index)


@dataclass
class PackedSequence:
    tokens: np.ndarray  # [seq_len]
    doc_starts: np.ndarray  # int32 starts of document pieces, first is 0
    n_real: int  # non-padding tokens
    loss_mask: np.ndarray | None = None  # uint8 [seq_len], 0 = never a target (MeCo prefix); None = all may be


class PackedDataset:
    """Random access to packed sequences of one phase (memory-mapped)."""

    def __init__(self, phase_dir: str | Path):
        self.dir = Path(phase_dir)
        self.index = json.loads((self.dir / INDEX).read_text())
        self.seq_len = int(self.index["seq_len"])
        self.pad_id = int(self.index["pad_id"])
        self.eos_id = int(self.index["eos_id"])
        self._shards = []
        self._offsets = [0]
        for s in self.index["shards"]:
            # A shard's files are in the phase directory, or (``uris``) in the shared store pack wrote them to.
            where = lambda key: fetch_uri((s.get("uris") or {}).get(key) or str(self.dir / s[key]))  # noqa: E731
            toks = np.load(where("tokens"), mmap_mode="r")
            starts = np.load(where("doc_starts"))
            idx = np.load(where("doc_index"))
            mask = np.load(where("loss_mask"), mmap_mode="r") if s.get("loss_mask") else None
            self._shards.append((toks, starts, idx, mask))
            self._offsets.append(self._offsets[-1] + toks.shape[0])

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, i: int) -> PackedSequence:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        toks, starts, idx, mask = self._shards[shard]
        j = i - self._offsets[shard]
        seq = np.asarray(toks[j])
        pads = np.flatnonzero(seq == self.pad_id)  # padding is a tail; pad_id never equals eos_id
        n_real = int(pads[0]) if pads.size else self.seq_len
        return PackedSequence(tokens=seq, doc_starts=starts[idx[j]:idx[j + 1]], n_real=n_real,
                              loss_mask=np.asarray(mask[j]) if mask is not None else None)
