"""ZIP-FIT: embedding-free data selection by compression-based alignment.

Obbad, Chen, Brown, Miranda et al. 2024, *ZIP-FIT: Embedding-Free Data Selection via Compression-Based
Alignment*, arXiv:2410.18194. A candidate's alignment with a target set is one minus its mean normalized
compression distance (gzip) to the target examples; the most aligned candidates are kept:

    NCD(x, y) = (C(xy) - min(C(x), C(y))) / max(C(x), C(y)),  C = len(gzip(.))
    alignment(x) = 1 - mean_{y in target} NCD(x, y)

The target here is a fixed, seeded sample of ``target_docs`` records of ``select.dsir.target_sources``
(chosen by a hash of (seed, id): independent of shard layout and input order), every text, target and
candidate alike, truncated to ``max_chars`` characters. The cost per candidate is therefore bounded:
``target_docs`` gzip compressions of at most ``2 * max_chars`` characters (plus one of the candidate alone).
"""
from __future__ import annotations

import gzip
import hashlib

import numpy as np

DEFAULT_TARGET_DOCS = 64
DEFAULT_MAX_CHARS = 1000
LEVEL = 9  # gzip.compress's default, as in the paper's reference code


def compressed_len(data: bytes) -> int:
    # mtime=0: the header holds no time, so the output (not only its length) is reproducible.
    return len(gzip.compress(data, compresslevel=LEVEL, mtime=0))


def _encode(text: str, max_chars: int) -> bytes:
    return (text or "")[:max_chars].encode("utf-8", "surrogatepass")


def ncd(x: str, y: str, max_chars: int = DEFAULT_MAX_CHARS) -> float:
    """Normalized compression distance of two texts (~0: one explains the other; ~1: unrelated)."""
    bx, by = _encode(x, max_chars), _encode(y, max_chars)
    cx, cy = compressed_len(bx), compressed_len(by)
    return (compressed_len(bx + by) - min(cx, cy)) / max(cx, cy)


class Aligner:
    """The target sample, compressed once; ``alignment`` scores candidates against it."""

    def __init__(self, targets: list[str], max_chars: int = DEFAULT_MAX_CHARS):
        if not targets:
            raise ValueError("ZIP-FIT needs at least one target text")
        self.max_chars = int(max_chars)
        self.targets = [_encode(t, self.max_chars) for t in targets]
        self.target_lens = [compressed_len(t) for t in self.targets]

    def alignment(self, texts: list[str]) -> np.ndarray:
        """1 - mean NCD to the target texts, per text (higher: more like the target)."""
        out = np.empty(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            bx = _encode(text, self.max_chars)
            cx = compressed_len(bx)
            total = 0.0
            for by, cy in zip(self.targets, self.target_lens):
                total += (compressed_len(bx + by) - min(cx, cy)) / max(cx, cy)
            out[i] = 1.0 - total / len(self.targets)
        return out


def target_key(seed: int, record_id: str) -> bytes:
    """The order the target sample is drawn in: a hash of (seed, id), not the input order."""
    return hashlib.sha1(f"{seed}\x00zipfit\x00{record_id}".encode("utf-8", "surrogatepass")).digest()
