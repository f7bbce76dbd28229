"""Optional check of LSH candidate pairs by the true Jaccard similarity of their shingle sets.

Only the records that occur in a candidate pair are re-read (one shard at a
time, text column only) and shingled, so memory follows the number of
near-duplicate candidates, not the corpus.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.core.shards import read_shard
from pipelines.dedup.minhash import MinHasher
from pipelines.dedup.normalize import words


def shingle_sets(hasher: MinHasher, texts: list[str]) -> list[np.ndarray]:
    hashes, counts = hasher.shingle_hashes([words(t) for t in texts])
    return [np.unique(h) for h in np.split(hashes, np.cumsum(counts)[:-1])] if texts else []


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def jaccard_verifier(inputs: list[Path], offsets: np.ndarray, hasher: MinHasher, threshold: float):
    """A callable (src, dst) -> bool mask of the pairs whose shingle-set Jaccard >= threshold."""

    def verify(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        involved = np.unique(np.r_[src, dst])
        sets: dict[int, np.ndarray] = {}
        bounds = list(offsets) + [np.iinfo(np.int64).max]
        for s, path in enumerate(inputs):
            mine = involved[(involved >= bounds[s]) & (involved < bounds[s + 1])]
            if len(mine):
                texts = read_shard(path, columns=["text"]).column("text").take(mine - bounds[s]).to_pylist()
                sets.update(zip(mine.tolist(), shingle_sets(hasher, texts)))
        return np.fromiter((jaccard(sets[a], sets[b]) >= threshold for a, b in zip(src.tolist(), dst.tolist())),
                           dtype=bool, count=len(src))

    return verify
