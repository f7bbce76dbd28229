"""Cross-source exact copies under scope ``snapshot``: counted, not dropped.

With ``dedup.scope: snapshot`` every key is salted with its record's source, so
a page that two crawls both hold is kept in both: by design (FineWeb's
per-snapshot dedup), but the corpus should still say how much of it repeats
across crawls. Pass 1 also writes each record's *unsalted* exact key with its
source's salt (``xsource`` key files, partitioned by hash range like the
others); one task per hash range then counts the records whose text is the
text of a better ranked record from another source: the same definition as
scope ``global``'s cross-source drops (a copy of a record kept from another
source), here only counted. In a refresh the dedup index's exact keys take part
(unsalted with their entries' sources; they rank first), so a new crawl's copies
of earlier versions' pages count too. Exact copies only: near copies across
crawls would need unsalted MinHash bands, a second full banding.
"""
from __future__ import annotations

import numpy as np

from pipelines.dedup import history, spill

KIND = "xsource"
DTYPE = np.dtype([("k", "<u8"), ("k2", "<u8"), ("salt", "<u8"), ("r", "<i8")])


def write_keys(store, rel: str, keys: np.ndarray, salt: np.ndarray, rank: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """A shard's unsalted exact keys with their records' source salts and ranks, by hash range."""
    rec = np.empty(len(keys), DTYPE)
    rec["k"], rec["k2"], rec["salt"], rec["r"] = keys[:, 0], keys[:, 1], salt, rank
    return spill.write_partitioned(store, rel, rec, rec["k"], bounds)


def stage_index(job: dict) -> dict:
    """The dedup index's exact keys, unsalted with the sources of their entries (hid = rank), as one more
    shard's ``xsource`` file."""
    pieces = [np.fromfile(history.local_file(job["store"], entry), spill.EXACT_DTYPE) for entry in job["entries"]]
    src = np.concatenate(pieces) if pieces else np.zeros(0, spill.EXACT_DTYPE)
    sources = history.read_records(job["store"], job["records"], ["source"]).column("source").to_pylist()
    salt = history.source_salts(sources)[src["r"]] if len(src) else np.zeros(0, np.uint64)
    keys = np.stack([src["k"] ^ salt, src["k2"] ^ salt], 1) if len(src) else np.zeros((0, 2), np.uint64)
    return {"offsets": write_keys(job["scratch"], job["rel"], keys, salt, src["r"], job["bounds"]),
            "sources": sorted(set(sources), key=str)}


def count_copies(job: dict) -> dict[int, int]:
    """One hash range: per source salt, the records (ranked ``first`` or later: this run's) whose text is the
    text of a better ranked record from another source."""
    rec = spill.read_parts(job["store"], DTYPE, job["parts"])
    if not len(rec):
        return {}
    rec = rec[np.lexsort((rec["r"], rec["k2"], rec["k"]))]
    starts = spill.group_starts(np.stack([rec["k"], rec["k2"]], 1))
    group = np.cumsum(starts) - 1
    # a record is a cross-source copy when some better ranked member of its group has another salt: i.e. it
    # differs from the group's first salt, or the group's salts changed before it
    changed = np.r_[False, rec["salt"][1:] != rec["salt"][:-1]] & ~starts
    seen_other = np.maximum.accumulate(np.where(changed, np.arange(len(rec)), -1))
    first_of_group = np.flatnonzero(starts)[group]
    copy = (rec["salt"] != rec["salt"][first_of_group]) | (seen_other > first_of_group)
    copy &= rec["r"] >= job["first"]
    salts, counts = np.unique(rec["salt"][copy], return_counts=True)
    return {int(s): int(c) for s, c in zip(salts, counts)}


def count(run_map, store, files: list[tuple[str, np.ndarray]], parts: int, first: int, sources: list[str]) -> dict:
    """{"records": copies, "by_source": {source: copies}} over every hash range (``first``: this run's first
    rank; ``sources``: the names the salts are of)."""
    jobs = [{"store": store, "parts": spill.slices(files, p), "first": first} for p in range(parts)]
    by_salt: dict[int, int] = {}
    for found in run_map(count_copies, jobs):
        for salt, n in found.items():
            by_salt[salt] = by_salt.get(salt, 0) + n
    names = dict(zip(history.source_salts(sources).tolist(), sources))
    by_source = {names.get(s, "?"): n for s, n in by_salt.items()}
    return {"records": sum(by_salt.values()), "by_source": dict(sorted(by_source.items()))}
