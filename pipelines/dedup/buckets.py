"""Bucket tasks: one per (key kind, hash range), on the executor; each reads its range of every shard's key file.

Records whose keys are equal form a group; every member is linked to the
group's best ranked member (a star: the group's smallest rank), so what a
task decides depends on the records only, never on sharding or order.

- exact / url: the star edges go to the component files (pipelines.dedup.components);
  the linked members (the group's non-heads) are listed by node range for the
  finalize tasks: an exact copy of a better ranked record is an exact
  duplicate, and takes no part in MinHash banding (its representative does).
- band b: records sharing the band's hash are candidate pairs (star pairs,
  smaller rank first), written by node range of the pair's first record for
  the pair tasks (pipelines.dedup.verify), which drop the pairs repeated by
  other bands and check them by true Jaccard.
"""
from __future__ import annotations

import numpy as np

from pipelines.dedup import spill
from pipelines.dedup.components import LARGE, write_edges
from pipelines.dedup.timing import PhaseClock

# A candidate pair (u < v: keep ranks) and where each record's shingles are (shard, count, first shingle).
PAIR_DTYPE = np.dtype([("u", "<i8"), ("v", "<i8"), ("us", "<u4"), ("uc", "<u4"), ("uo", "<u8"),
                       ("vs", "<u4"), ("vc", "<u4"), ("vo", "<u8")])


def stars(rec: np.ndarray, key_fields: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(members, heads): the position in ``rec`` of every record that is not its key group's best ranked one,
    and the position of that best ranked one (the group's head)."""
    # Most keys are unique: find the entries whose first key word repeats (one sort), then rank only those.
    first = rec[key_fields[0]]
    by_key = np.argsort(first)
    repeats = first[by_key[1:]] == first[by_key[:-1]]
    shared = by_key[np.r_[repeats, False] | np.r_[False, repeats]] if len(rec) else by_key
    order = shared[np.lexsort(tuple(rec[f][shared] for f in ("r", *key_fields[::-1])))]
    rec = rec[order]
    starts = spill.group_starts(np.stack([rec[f] for f in key_fields], 1)) if len(rec) else np.zeros(0, bool)
    head = np.flatnonzero(starts)[np.cumsum(starts) - 1]
    member = np.flatnonzero(~starts)
    return order[member], order[head[member]]


def exact_bucket(job: dict) -> dict:
    """Exact (or URL) groups of one hash range: star edges to the component files, non-heads listed."""
    clock = PhaseClock()
    store = job["store"]
    with clock("read"):
        rec = spill.read_parts(store, spill.EXACT_DTYPE, job["parts"])
    with clock("group"):
        member, head = stars(rec, ("k", "k2"))
        src, dst = rec["r"][member], rec["r"][head]
    with clock("write"):
        offsets = write_edges(store, job["out"], src, dst, LARGE, job["bounds"])
        nonheads = np.sort(src)
        by_node = spill.write_partitioned(store, nonheads_rel(job["out"]), nonheads, nonheads, job["bounds"])
    return {"offsets": offsets, "nonheads": by_node, "phases": clock.phases}


def nonheads_rel(out: str) -> str:
    """The ranks an exact / URL bucket task linked to a better ranked copy, sorted (by node range)."""
    return out + ".nonheads.bin"


def nonhead_bits(job: dict) -> None:
    """The exact non-heads of every bucket task as one bitmap over ranks (n / 8 bytes), for the band tasks."""
    store = job["store"]
    bits = np.zeros(-(-job["n"] // 8), np.uint8)
    for rel, count in job["files"]:
        ranks = spill.read_rows(store, rel, np.dtype("<i8"), 0, count)
        np.bitwise_or.at(bits, ranks >> 3, (1 << (ranks & 7)).astype(np.uint8))
    spill.save_array(store, job["out"], bits)


def band_bucket(job: dict) -> dict:
    """One band's groups in one hash range: candidate pairs, partitioned by node range of their first record."""
    clock = PhaseClock()
    store = job["store"]
    with clock("read"):
        rec = spill.read_parts(store, spill.BAND_DTYPE, job["parts"])
        if job["nonheads"] is not None and len(rec):  # exact copies follow their representative
            bits = spill.load_array(store, job["nonheads"], cache=True)  # n / 8 bytes, once per worker process
            rec = rec[((bits[rec["r"] >> 3] >> (rec["r"] & 7)) & 1) == 0]
    with clock("group"):
        member, head = stars(rec, ("k",))
        pairs = np.empty(len(member), PAIR_DTYPE)
        for side, pos in (("u", head), ("v", member)):
            pairs[side] = rec["r"][pos]
            for f in ("s", "c", "o"):
                pairs[side + f] = rec[f][pos]
    with clock("write"):
        offsets = spill.write_partitioned(store, job["out"], pairs, pairs["u"], job["bounds"])
    return {"offsets": offsets, "pairs": len(pairs), "phases": clock.phases}
