"""Exact duplicates: a 128-bit xxhash of the normalised text."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import xxhash

from pipelines.dedup.normalize import normalize_text


def exact_hashes(texts: Iterable[str], *, lowercase: bool = True, strip_punctuation: bool = True) -> np.ndarray:
    """(n, 2) uint64: each row is the 128-bit digest of one normalised text."""
    return hash_normalized(normalize_text(t, lowercase=lowercase, strip_punctuation=strip_punctuation) for t in texts)


def hash_normalized(normalized: Iterable[str]) -> np.ndarray:
    """exact_hashes of texts already passed through normalize_text."""
    digests = b"".join(xxhash.xxh3_128_digest(t.encode("utf-8", "surrogatepass")) for t in normalized)
    return np.frombuffer(digests, dtype="<u8").reshape(-1, 2).copy()
