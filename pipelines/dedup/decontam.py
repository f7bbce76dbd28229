"""Benchmark decontamination: word-sequence overlap between corpus records and evaluation sets.

Items (the texts a model is scored on, read by pipelines.dedup.eval_sets) and records are compared as the
same normalised words MinHash reads (minhash.text_word_hashes). How an item is matched depends on its length:

- ``ngram`` words (default 13) or more: a record is contaminated when it shares any word n-gram with the item;
- ``min_words`` (default 3) to ngram - 1 words: when it holds the whole item as a contiguous word sequence
  (n adapted to the item: its own length), so short QA items are caught too;
- under min_words: reported as too short to check. A one- or two-word item ("Paris") occurs in countless
  unrelated documents, so a match would say nothing about contamination.

Each window length in use (ngram, and every short item's length) has one table: the sorted hashes of the
items' windows of that length and which benchmarks hold each. A record's windows of any length come from one
prefix sum over its word hashes (a window's hash is a polynomial in its word hashes, so every length costs two
array operations per word), then one vectorised lookup per length: no loop over records or items.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.dedup import eval_sets
from pipelines.dedup.minhash import text_word_hashes

CONTAMINATED = "contaminated"
MODES = ("drop", "flag")
# Window hash: sum of word_hash[i + k] * BASE^k (mod 2^64). BASE is odd, so invertible mod 2^64: the hash of
# the window at i is (prefix[i + L] - prefix[i]) * BASE^-i, for every i and L at once.
_BASE = np.uint64(0x9E3779B97F4A7C15)
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64. Computed per batch, not cached: a cache grown to the largest batch
    would stay in every worker for good (a few ms per batch is the price)."""
    out = np.full(n, base, dtype=np.uint64)
    if n:
        out[0] = 1
    return np.cumprod(out)  # wraps mod 2^64, as meant


class _WordStream:
    """The word hashes of many documents, concatenated, ready to hash windows of any length."""

    def __init__(self, word_hashes: np.ndarray, lengths: np.ndarray):
        n = len(word_hashes)
        self.prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(word_hashes * _powers(_BASE, n), out=self.prefix[1:])
        self.inverse = _powers(_BASE_INV, n)
        self.ends = np.cumsum(lengths)  # one past each document's last word

    def windows(self, size: int) -> np.ndarray:
        """The hash of the ``size`` words from every position on (contiguous slices: no gathers); a window
        that runs into the next document is no window of either: ``owners`` tells them apart."""
        count = max(len(self.prefix) - size, 0)
        return (self.prefix[size:size + count] - self.prefix[:count]) * self.inverse[:count]

    def owners(self, starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(whether the window at each start lies inside one document, the document it starts in)."""
        owner = np.searchsorted(self.ends, starts, side="right")
        return starts + size <= self.ends[owner], owner


@dataclass
class _Table:
    """Sorted unique window hashes of one length, which benchmarks hold each, and a bitmap prefilter."""
    hashes: np.ndarray
    member: np.ndarray  # (len(hashes), benchmarks) bool
    bitmap: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        # Most record windows match nothing: a bitmap on the low bits (>= 8 slots per hash, so at most 1 in 8
        # misses passes) is a cheap gather that spares them the binary search.
        self.bitmap = np.zeros(max(1024, 1 << int(8 * len(self.hashes)).bit_length()), dtype=bool)
        self.bitmap[self.hashes & np.uint64(len(self.bitmap) - 1)] = True

    @classmethod
    def with_set(cls, table: "_Table | None", hashes: np.ndarray, column: int) -> "_Table":
        """``table`` (None: empty) with one more benchmark column, holding ``hashes``."""
        old_hashes = table.hashes if table is not None else np.zeros(0, np.uint64)
        old_member = table.member if table is not None else np.zeros((0, column), bool)
        unique, where = np.unique(np.concatenate([old_hashes, hashes]), return_inverse=True)
        member = np.zeros((len(unique), column + 1), dtype=bool)
        rows, cols = np.nonzero(old_member)
        member[where.ravel()[rows], cols] = True
        member[where.ravel()[len(old_hashes):], column] = True
        return cls(unique, member)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``hashes`` found in the table, their (hits, benchmarks) membership)."""
        maybe = np.flatnonzero(self.bitmap[hashes & np.uint64(len(self.bitmap) - 1)])
        pos = np.searchsorted(self.hashes, hashes[maybe]).clip(max=len(self.hashes) - 1)
        found = self.hashes[pos] == hashes[maybe]
        return maybe[found], self.member[pos[found]]


@dataclass
class ContaminationIndex:
    ngram: int
    min_words: int = 3
    names: list[str] = field(default_factory=list)
    # per benchmark: items, checked by n-gram (by_ngram), checked whole (by_whole), too short to check
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # per benchmark: the eval file it was built from
    tables: dict[int, _Table] = field(default_factory=dict)  # window length -> table

    def add(self, name: str, texts: list[str]) -> None:
        word_hashes, lengths = text_word_hashes(texts)
        by_ngram = lengths >= self.ngram
        by_whole = (lengths >= self.min_words) & ~by_ngram
        column = len(self.names)
        self.names.append(name)
        self.coverage[name] = {"items": len(texts), "by_ngram": int(by_ngram.sum()), "by_whole": int(by_whole.sum()),
                               "too_short": int((~by_ngram & ~by_whole).sum())}
        stream = _WordStream(word_hashes, lengths)
        new = {}
        for size in sorted({self.ngram, *lengths[by_whole].tolist()}):
            hashes = stream.windows(size)
            inside, owner = stream.owners(np.arange(len(hashes)), size)
            # n-grams of long items; short items only as a whole (a window their own length)
            keep = inside & (by_ngram[owner] if size == self.ngram else by_whole[owner] & (lengths[owner] == size))
            new[size] = hashes[keep]
        empty = np.zeros(0, np.uint64)
        self.tables = {size: _Table.with_set(self.tables.get(size), new.get(size, empty), column)
                       for size in sorted(set(self.tables) | {s for s, h in new.items() if len(h)})}

    def match(self, texts: list[str]) -> np.ndarray:
        """(len(texts), len(names)) bool: record i holds an item of benchmark j (an n-gram of it, or all of it)."""
        return self.match_words(*text_word_hashes(texts))

    def match_words(self, word_hashes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """match() given the texts' minhash.text_word_hashes (the dedup stage computes them once for everything)."""
        out = np.zeros((len(lengths), len(self.names)), dtype=bool)
        if not self.tables or not len(word_hashes):
            return out
        stream = _WordStream(word_hashes, lengths)
        for size, table in self.tables.items():
            hits, member = table.lookup(stream.windows(size))
            rows, sets = np.nonzero(member)
            inside, owner = stream.owners(hits[rows], size)  # hits are rare: only they are placed
            out[owner[inside], sets[inside]] = True
        return out


def build_index(cfg: dict, root: Path) -> ContaminationIndex:
    """cfg: the validated dedup.decontam section; eval set paths follow storage.input_uri (relative to root)."""
    index = ContaminationIndex(ngram=cfg["ngram"], min_words=cfg["min_words"])
    for name, spec in sorted(cfg["sets"].items()):
        loaded = eval_sets.load_set(name, spec, root)
        index.add(name, loaded.texts)
        index.sha256[name] = loaded.sha256
    return index


def _positive_int(cfg: dict, key: str) -> None:
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"dedup.decontam.{key} must be a positive integer, got {value!r}")


def validate(cfg: dict | None) -> dict:
    cfg = {"enabled": False, "ngram": 13, "min_words": 3, "mode": "drop", "sets": {}, **(cfg or {})}
    if cfg["mode"] not in MODES:
        raise ValueError(f"dedup.decontam.mode must be one of {MODES}, got {cfg['mode']!r}")
    _positive_int(cfg, "ngram")
    _positive_int(cfg, "min_words")
    if not isinstance(cfg["sets"], dict):
        raise ValueError(f"dedup.decontam.sets must map set names to {{path, format}}, got {cfg['sets']!r}")
    if cfg["enabled"] and not cfg["sets"]:
        raise ValueError("dedup.decontam.enabled needs at least one eval set in dedup.decontam.sets")
    for name, spec in cfg["sets"].items():
        eval_sets.set_reader(name, spec)  # raises naming the set
    return cfg


def contaminated_records(stage_dir: Path, cfg: dict, root: Path):
    """A frame (id, contamination) of every record in ``stage_dir``'s shards, re-matched against the eval sets.

    For the gate: an independent recomputation, so it does not trust the stage's own flag column.
    """
    import pandas as pd

    from pipelines.core.shards import iter_batches, stage_shards

    index = build_index(validate(cfg), Path(root))
    ids, labels = [], []
    for ref in stage_shards(stage_dir, "dedup"):
        for batch in iter_batches(ref.uri, columns=["id", "text"]):
            hits = index.match(batch.column("text").to_pylist())
            ids.extend(batch.column("id").to_pylist())
            labels.extend(",".join(index.names[j] for j in np.flatnonzero(h)) or None for h in hits)
    return pd.DataFrame({"id": ids, "contamination": pd.Series(labels, dtype=object)})
