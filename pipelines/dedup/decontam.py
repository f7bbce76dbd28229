"""Benchmark decontamination: word n-gram overlap between corpus records and evaluation sets.

An evaluation item is the text a model is scored on (GSM8K question + answer,
HumanEval prompt + canonical solution, CommonsenseQA question + choices).
Its word n-grams (default 13, on the same normalised words as MinHash) are
hashed into one sorted array per benchmark; a record is contaminated by a
benchmark when any of its n-grams is in that array. Items shorter than n
words have no n-gram and are counted as ``short_items`` (they cannot be
matched this way). Other formats: add a loader to LOADERS.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipelines.dedup.minhash import MinHasher, text_word_hashes

CONTAMINATED = "contaminated"
MODES = ("drop", "flag")


def _jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from None


def _gsm8k(row: dict) -> str:
    return f"{row['question']}\n{row['answer']}"


def _humaneval(row: dict) -> str:
    return f"{row['prompt']}{row['canonical_solution']}"


def _commonsenseqa(row: dict) -> str:
    question = row["question"]
    if isinstance(question, dict):  # the original release nests {stem, choices}
        return " ".join([question["stem"]] + [c["text"] for c in question.get("choices", [])])
    return " ".join([question] + list((row.get("choices") or {}).get("text", [])))


# format name -> one jsonl row -> the item's text
LOADERS: dict[str, Callable[[dict], str]] = {"gsm8k": _gsm8k, "humaneval": _humaneval, "commonsenseqa": _commonsenseqa}


def load_items(path: str | Path, fmt: str) -> list[str]:
    if fmt not in LOADERS:
        raise ValueError(f"dedup.decontam: unknown eval format {fmt!r} (known: {sorted(LOADERS)})")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dedup.decontam: eval set {path} does not exist")
    try:
        return [LOADERS[fmt](row) for row in _jsonl(path)]
    except KeyError as e:
        raise ValueError(f"dedup.decontam: {path} is not in {fmt} format (missing field {e})") from None


@dataclass
class ContaminationIndex:
    ngram: int
    names: list[str] = field(default_factory=list)
    grams: list[np.ndarray] = field(default_factory=list)  # per benchmark: sorted unique n-gram hashes
    items: dict[str, int] = field(default_factory=dict)
    short_items: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self._hasher = MinHasher(ngram=self.ngram, bands=1, rows=1)

    def add(self, name: str, texts: list[str]) -> None:
        word_hashes, lengths = text_word_hashes(texts)
        hashes, counts = self._hasher.shingles_of_words(word_hashes, lengths, texts)
        long_doc = lengths >= self.ngram
        self.names.append(name)
        self.grams.append(np.unique(hashes[np.repeat(long_doc, counts)]))
        self.items[name] = len(texts)
        self.short_items[name] = int((~long_doc).sum())

    def match(self, texts: list[str]) -> np.ndarray:
        """(len(texts), len(names)) bool: record i shares an n-gram with benchmark j."""
        return self.match_words(*text_word_hashes(texts), texts)

    def match_words(self, word_hashes: np.ndarray, lengths: np.ndarray, texts: list[str]) -> np.ndarray:
        """match() given the texts' minhash.text_word_hashes (the dedup stage computes them once for both)."""
        out = np.zeros((len(texts), len(self.names)), dtype=bool)
        long_doc = lengths >= self.ngram
        if not long_doc.any() or not self.names:
            return out
        hashes, counts = self._hasher.shingles_of_words(word_hashes, lengths, texts)
        owner = np.repeat(np.arange(len(texts)), counts)
        valid = long_doc[owner]  # a short record's single whole-text shingle is no n-gram
        hashes, owner = hashes[valid], owner[valid]
        for j, grams in enumerate(self.grams):
            if len(grams):
                pos = np.searchsorted(grams, hashes).clip(max=len(grams) - 1)
                out[np.unique(owner[grams[pos] == hashes]), j] = True
        return out


def build_index(cfg: dict, resolve: Callable[[str], Path]) -> ContaminationIndex:
    """cfg: the validated dedup.decontam section (sets: name -> {path, format})."""
    index = ContaminationIndex(ngram=cfg["ngram"])
    for name, spec in sorted(cfg["sets"].items()):
        index.add(name, load_items(resolve(spec["path"]), spec.get("format", name)))
    return index


def validate(cfg: dict | None) -> dict:
    cfg = {"enabled": False, "ngram": 13, "mode": "drop", "sets": {}, **(cfg or {})}
    if cfg["mode"] not in MODES:
        raise ValueError(f"dedup.decontam.mode must be one of {MODES}, got {cfg['mode']!r}")
    if not isinstance(cfg["ngram"], int) or isinstance(cfg["ngram"], bool) or cfg["ngram"] < 1:
        raise ValueError(f"dedup.decontam.ngram must be a positive integer, got {cfg['ngram']!r}")
    if cfg["enabled"] and not cfg["sets"]:
        raise ValueError("dedup.decontam.enabled needs at least one eval set in dedup.decontam.sets")
    for name, spec in cfg["sets"].items():
        if not isinstance(spec, dict) or "path" not in spec:
            raise ValueError(f"dedup.decontam.sets.{name} needs a path (and a format: {sorted(LOADERS)})")
        if spec.get("format", name) not in LOADERS:
            raise ValueError(f"dedup.decontam.sets.{name}: unknown format {spec.get('format', name)!r} (known: {sorted(LOADERS)})")
    return cfg


def contaminated_records(stage_dir: Path, cfg: dict, root: Path):
    """A frame (id, contamination) of every record in ``stage_dir``'s shards, re-matched against the eval sets.

    For the gate: an independent recomputation, so it does not trust the stage's own flag column.
    """
    import pandas as pd

    from pipelines.core.shards import iter_batches, stage_shards

    index = build_index(validate(cfg), lambda p: Path(root) / p)
    ids, labels = [], []
    for ref in stage_shards(stage_dir, "dedup"):
        for batch in iter_batches(ref.uri, columns=["id", "text"]):
            hits = index.match(batch.column("text").to_pylist())
            ids.extend(batch.column("id").to_pylist())
            labels.extend(",".join(index.names[j] for j in np.flatnonzero(h)) or None for h in hits)
    return pd.DataFrame({"id": ids, "contamination": pd.Series(labels, dtype=object)})
