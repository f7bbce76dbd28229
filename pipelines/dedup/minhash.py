"""MinHash signatures and LSH band hashes, vectorised with numpy.

Shingles are word n-grams. Each word is hashed once, vectorised over the
code points of a block of texts (text_word_hashes: no Python str per word);
an n-gram's hash is a position-weighted sum of its word hashes passed through
a 64-bit finaliser, so shingle hashing is array arithmetic rather than one
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

import unicodedata
from dataclasses import dataclass, field

import numpy as np
import xxhash

from pipelines.dedup.normalize import words

P61 = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64((1 << 32) - 1)
_MASK29 = np.uint64((1 << 29) - 1)
_U64 = np.uint64
# Shingles per chunk of the (permutations x shingles) matrix: ~7 MB at 112 permutations (measured fastest).
CHUNK_SHINGLES = 8192


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


# Word hashing over code points. A word is a maximal run of characters c with c.isalnum() in the NFKC,
# lowercased text: exactly the tokens of normalize.words() (its regex turns [^\w\s]|_ into spaces,
# and re's \w is isalnum() or "_"). Hashing the code point array with numpy avoids a Python str
# (and a hash call) per word, which dominated the stage.
# A word hash is fmix64(sum of (code point + 1) * weight[position mod 64], xor its length): a linear
# hash with odd random weights, so two distinct words collide only with probability ~2^-64.
_CHAR_WEIGHTS = _odd_constants(64, salt=0xC0DE)
_ASCII_ALNUM = np.array([chr(c).isalnum() for c in range(128)], dtype=bool)
_LENGTH_SALT = _U64(0x9E3779B97F4A7C15)
# Characters per vectorised block: bounds the temporaries (~40 bytes per character) to ~80 MB.
BLOCK_CHARS = 2_000_000


def _prepare(text: str) -> str:
    if text.isascii() or unicodedata.is_normalized("NFKC", text):  # the check is ~5x cheaper than normalising
        return text.lower()
    return unicodedata.normalize("NFKC", text).lower()


# Word-character flags by code point, filled lazily (only code points met so far are known).
_WORD_TABLE = np.zeros(0x110000, dtype=bool)
_KNOWN = np.zeros(0x110000, dtype=bool)
_WORD_TABLE[:128], _KNOWN[:128] = _ASCII_ALNUM, True


def _is_word_char(cps: np.ndarray) -> np.ndarray:
    """Bool mask of code points that are word characters (str.isalnum)."""
    if cps.dtype == np.uint8:
        return _ASCII_ALNUM[cps]
    unknown = ~_KNOWN[cps]
    if unknown.any():
        new = np.unique(cps[unknown])
        _WORD_TABLE[new] = np.fromiter((chr(c).isalnum() for c in new.tolist()), dtype=bool, count=len(new))
        _KNOWN[new] = True
    return _WORD_TABLE[cps]


def text_word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word of every text, concatenated; word count per text), words as normalize.words()."""
    hashes, counts = [], np.zeros(len(texts), dtype=np.int64)
    start = 0
    while start < len(texts):
        stop, size = start, 0
        while stop < len(texts) and (stop == start or size + len(texts[stop]) <= BLOCK_CHARS):
            size += len(texts[stop]) + 1
            stop += 1
        h, c = _word_hashes_with_counts(texts[start:stop])
        hashes.append(h)
        counts[start:stop] = c
        start = stop
    return (np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)), counts


def _word_hashes_with_counts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    prepared = [_prepare(t) for t in texts]
    big = "\x00".join(prepared)  # NUL is no word character: words never cross documents
    if big.isascii():
        cps = np.frombuffer(big.encode("ascii"), dtype=np.uint8)
    else:
        cps = np.frombuffer(big.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    is_word = _is_word_char(cps)
    edge = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edge == 1)
    lengths = np.flatnonzero(edge == -1) - starts
    chars = cps[is_word].astype(np.uint64)
    first = np.cumsum(lengths) - lengths  # each word's first character in `chars`
    pos = np.arange(len(chars)) - np.repeat(first, lengths)
    chars += _U64(1)
    chars *= _CHAR_WEIGHTS[pos & 63]
    sums = np.add.reduceat(chars, first) if len(first) else np.zeros(0, np.uint64)
    word_hashes = fmix64(sums ^ (lengths.astype(np.uint64) * _LENGTH_SALT))
    # Word -> document by its start position (documents are separated by one NUL).
    doc_ends = np.cumsum(np.fromiter((len(t) + 1 for t in prepared), dtype=np.int64, count=len(prepared)))
    counts = np.bincount(np.searchsorted(doc_ends, starts, side="right"), minlength=len(texts))
    return word_hashes, counts


def word_sequence_digests(word_hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(n, 2) uint64: a 128-bit digest of each document's word sequence (= of its fully normalised text)."""
    buf = memoryview(np.ascontiguousarray(word_hashes, dtype="<u8")).cast("B")
    ends = np.cumsum(counts) * 8
    starts = (ends - counts * 8).tolist()
    digests = b"".join(xxhash.xxh3_128_digest(buf[a:b]) for a, b in zip(starts, ends.tolist()))
    return np.frombuffer(digests, dtype="<u8").reshape(-1, 2).copy()


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
        """64-bit hashes of every document's shingles, concatenated in document order, and the count per document.

        Word lists are joined and re-tokenised, so this and text_shingle_hashes agree on every document.
        """
        return self.text_shingle_hashes([" ".join(ws) for ws in docs])

    def text_shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """shingle_hashes of raw texts, tokenised as normalize.words() does (vectorised: no str per word)."""
        word_hashes, lengths = text_word_hashes(texts)
        return self.shingles_of_words(word_hashes, lengths, texts)

    def shingles_of_words(self, word_hashes: np.ndarray, lengths: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes from text_word_hashes(texts) (the texts are read only for documents under n words)."""
        n = self.ngram
        # Rolling n-gram hash over the concatenated word stream (n is small: loop over positions,
        # vectorised over all windows); windows that cross a document boundary are dropped below.
        n_windows = max(len(word_hashes) - n + 1, 0)
        combined = np.zeros(n_windows, dtype=np.uint64)
        for k in range(n):
            combined += word_hashes[k:k + n_windows] * self._position_weights[k]
        owner = np.repeat(np.arange(len(lengths)), lengths)[:n_windows]
        doc_starts = np.cumsum(lengths) - lengths
        inside = np.arange(n_windows) - doc_starts[owner] <= lengths[owner] - n
        long_doc = lengths >= n
        counts = np.where(long_doc, lengths - n + 1, 1)
        out = np.empty(int(counts.sum()), dtype=np.uint64)
        long_slot = np.repeat(long_doc, counts)
        out[long_slot] = fmix64(combined[inside])
        # A document shorter than n words is one shingle: its whole normalised text.
        out[~long_slot] = np.fromiter((xxhash.xxh3_64_intdigest(_utf8(" ".join(words(texts[i]))))
                                       for i in np.flatnonzero(~long_doc)), dtype=np.uint64, count=int((~long_doc).sum()))
        return out, counts

    def signatures(self, docs: list[list[str]]) -> np.ndarray:
        """(n_docs, num_perm) uint64 MinHash signatures of word lists."""
        return self.signatures_of_shingles(*self.shingle_hashes(docs))

    def signatures_of_shingles(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(n_docs, num_perm) MinHash signatures from shingle_hashes' output."""
        # Permutations x shingles (each row contiguous): the min-reduction runs along rows, ~2x faster than by columns.
        sig = np.full((self.num_perm, len(counts)), np.iinfo(np.uint64).max, dtype=np.uint64)
        if not len(counts):
            return sig.T.copy()
        x = hashes
        owner = np.repeat(np.arange(len(counts)), counts)
        a, b = self.a[:, None], self.b[:, None]
        buf = np.empty((self.num_perm, min(CHUNK_SHINGLES, len(x))), dtype=np.uint64)
        for start in range(0, len(x), CHUNK_SHINGLES):
            stop = min(start + CHUNK_SHINGLES, len(x))
            permuted = np.multiply(a, x[None, start:stop], out=buf[:, :stop - start])  # wraps mod 2^64
            permuted += b
            chunk_owner = owner[start:stop]
            cuts = np.flatnonzero(np.r_[True, chunk_owner[1:] != chunk_owner[:-1]])
            mins = np.minimum.reduceat(permuted, cuts, axis=1)
            cols = chunk_owner[cuts]
            sig[:, cols] = np.minimum(sig[:, cols], mins)  # a document may straddle chunks
        # The >> 32 of h(x) is monotone, so it commutes with min: one shift per signature value, not per shingle.
        sig >>= _U64(32)
        return np.ascontiguousarray(sig.T)

    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        """(n_docs, bands) uint64: one hash per band of `rows` signature values."""
        banded = sig.reshape(len(sig), self.bands, self.rows)
        combined = np.zeros((len(sig), self.bands), dtype=np.uint64)
        for r in range(self.rows):
            combined += fmix64(banded[:, :, r] + _U64(r)) * self._row_weights[r]
        return fmix64(combined)
