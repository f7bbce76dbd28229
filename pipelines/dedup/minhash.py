"""MinHash signatures and LSH band hashes, vectorised with numpy.

Shingles are word n-grams. Each word is hashed once (64-bit xxhash); an
n-gram's hash is a position-weighted sum of its word hashes passed through a
64-bit finaliser, so shingle hashing is array arithmetic rather than one
string join + hash per shingle. A document with fewer than n words is one
shingle: the hash of its whole (normalised) text.

The K = bands * rows permutations are multiply-add-shift hashes
h(x) = ((a*x + b) mod 2^64) >> 32 with seeded odd a and random b
(Dietzfelbinger's 2-universal family): two array operations per shingle and
permutation, several times cheaper than exact (a*x + b) mod (2^61 - 1), which
(mulmod61) stays available; the shingle hashes are already fmix64-mixed, so
the cheaper family loses no accuracy in practice (see the P/R tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash

P61 = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64((1 << 32) - 1)
_MASK29 = np.uint64((1 << 29) - 1)
_U64 = np.uint64
# Shingles per chunk of the (shingles x permutations) matrix: small enough to stay in cache (~1 MB per array).
CHUNK_SHINGLES = 1024


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the output (wrapping uint64 math)."""
    x = x ^ (x >> _U64(33))
    x = x * _U64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> _U64(33))
    x = x * _U64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> _U64(33))


def _fold61(x: np.ndarray) -> np.ndarray:
    """x mod p, in place, for any uint64 x (2^61 = 1 mod p: the high bits fold onto the low ones)."""
    high = x >> _U64(61)
    x &= P61
    x += high  # now x < p + 8 < 2p
    return np.minimum(x, x - P61, out=x)  # x - p wraps to a huge value unless x >= p


def _mulmod61_unreduced(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A value < 2^62.6 congruent to a * x mod (2^61 - 1), for a, x < 2^61; broadcasts like a * x."""
    a_hi, a_lo = a >> _U64(32), a & _MASK32
    x_hi, x_lo = x >> _U64(32), x & _MASK32
    hi = a_hi * x_hi  # < 2^58, weight 2^64 = 8 (mod p)
    mid = a_hi * x_lo  # mid = a_hi*x_lo + a_lo*x_hi < 2^62, weight 2^32
    mid += a_lo * x_hi
    lo = a_lo * x_lo  # < 2^64, weight 1
    # mid * 2^32 = (mid >> 29) * 2^61 + (mid & (2^29-1)) * 2^32 = (mid >> 29) + ((mid & (2^29-1)) << 32) (mod p)
    total = hi << _U64(3)
    total += mid >> _U64(29)
    mid &= _MASK29
    mid <<= _U64(32)
    total += mid
    total += lo >> _U64(61)
    lo &= P61
    total += lo
    return total  # < 3 * 2^61 + 2^34


def mulmod61(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(a * x) mod (2^61 - 1) for a, x < 2^61, exact (numpy has no 128-bit integers)."""
    return _fold61(_mulmod61_unreduced(a, x))


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _odd_constants(n: int, salt: int) -> np.ndarray:
    """Fixed odd multipliers (independent of params: they define the hash, not a permutation)."""
    return np.random.default_rng(salt).integers(0, 2**63, size=n, dtype=np.uint64) * _U64(2) + _U64(1)


@dataclass
class MinHasher:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    a: np.ndarray = field(init=False, repr=False)
    b: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        for name in ("ngram", "bands", "rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"dedup.minhash.{name} must be a positive integer, got {value!r}")
        rng = np.random.default_rng(self.seed)
        self.a = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64) * _U64(2) + _U64(1)  # odd
        self.b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64) * _U64(2)
        self._position_weights = _odd_constants(self.ngram, salt=0x5817)
        self._row_weights = _odd_constants(self.rows, salt=0xBA4D)

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def shingle_hashes(self, docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of every document's shingles, concatenated in document order, and the count per document."""
        n = self.ngram
        lengths = np.fromiter((len(ws) for ws in docs), dtype=np.int64, count=len(docs))
        word_hashes = np.fromiter((xxhash.xxh3_64_intdigest(_utf8(w)) for ws in docs for w in ws), dtype=np.uint64,
                                  count=int(lengths.sum()))
        # Rolling n-gram hash over the concatenated word stream (n is small: loop over positions,
        # vectorised over all windows); windows that cross a document boundary are dropped below.
        n_windows = max(len(word_hashes) - n + 1, 0)
        combined = np.zeros(n_windows, dtype=np.uint64)
        for k in range(n):
            combined += word_hashes[k:k + n_windows] * self._position_weights[k]
        owner = np.repeat(np.arange(len(docs)), lengths)[:n_windows]
        doc_starts = np.cumsum(lengths) - lengths
        inside = np.arange(n_windows) - doc_starts[owner] <= lengths[owner] - n
        long_doc = lengths >= n
        counts = np.where(long_doc, lengths - n + 1, 1)
        out = np.empty(int(counts.sum()), dtype=np.uint64)
        long_slot = np.repeat(long_doc, counts)
        out[long_slot] = fmix64(combined[inside])
        # A document shorter than n words is one shingle: its whole text.
        out[~long_slot] = np.fromiter((xxhash.xxh3_64_intdigest(_utf8(" ".join(docs[i]))) for i in np.flatnonzero(~long_doc)),
                                      dtype=np.uint64, count=int((~long_doc).sum()))
        return out, counts

    def signatures(self, docs: list[list[str]]) -> np.ndarray:
        """(n_docs, num_perm) uint64 MinHash signatures of word lists."""
        hashes, counts = self.shingle_hashes(docs)
        sig = np.full((len(docs), self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        if not len(docs):
            return sig
        x = hashes
        owner = np.repeat(np.arange(len(docs)), counts)
        for start in range(0, len(x), CHUNK_SHINGLES):
            stop = min(start + CHUNK_SHINGLES, len(x))
            permuted = x[start:stop, None] * self.a[None, :]  # wraps mod 2^64
            permuted += self.b[None, :]
            permuted >>= _U64(32)
            chunk_owner = owner[start:stop]
            cuts = np.flatnonzero(np.r_[True, chunk_owner[1:] != chunk_owner[:-1]])
            mins = np.minimum.reduceat(permuted, cuts, axis=0)
            rows = chunk_owner[cuts]
            sig[rows] = np.minimum(sig[rows], mins)  # a document may straddle chunks
        return sig

    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        """(n_docs, bands) uint64: one hash per band of `rows` signature values."""
        banded = sig.reshape(len(sig), self.bands, self.rows)
        combined = np.zeros((len(sig), self.bands), dtype=np.uint64)
        for r in range(self.rows):
            combined += fmix64(banded[:, :, r] + _U64(r)) * self._row_weights[r]
        return fmix64(combined)
