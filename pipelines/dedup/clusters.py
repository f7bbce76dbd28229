"""Global duplicate decisions from pass 1's key files, as executor tasks (no texts needed, except shingles to verify).

Records are linked when their exact hashes are equal (each to its group's best
ranked record), when their normalised URLs are (likewise), or when they share
an LSH band hash (star edges to the bucket's best ranked record: a MinHash
candidate pair, kept when its true Jaccard reaches ``verify_threshold``).
Duplicate clusters are the connected components of that graph; each cluster
keeps its best ranked record (pipelines.dedup.keep), so the decision depends
only on the records, not on how they are sharded or partitioned.

Steps, each a map over partitions (pipelines.dedup.spill): exact and URL
bucket tasks (pipelines.dedup.buckets) -> band bucket tasks (exact copies of a
better ranked record sit out: their representative stands for them) -> pair
tasks (pipelines.dedup.verify) -> component rounds (pipelines.dedup.components).
The driver holds per record only the exact / URL non-head flags (one byte each)
and, at the end, the nodes of the duplicate clusters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.dedup import spill
from pipelines.dedup.buckets import band_bucket, exact_bucket
from pipelines.dedup.components import components
from pipelines.dedup.pass1 import EXACT, URL, band_kind
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.verify import pair_task

EXACT_DUP = "exact_dup"
NEAR_DUP = "near_dup"
DUPLICATE_URL = "duplicate_url"


@dataclass
class Decisions:
    """By keep rank: the records in clusters of two or more (the others are kept, alone)."""

    node: np.ndarray  # ranks of every clustered record, sorted
    kept: np.ndarray  # rank of the record its cluster keeps (itself when kept)
    size: np.ndarray  # members of its cluster
    reason: np.ndarray  # object: None (kept), EXACT_DUP, DUPLICATE_URL or NEAR_DUP
    candidate_pairs: int = 0  # distinct LSH candidate pairs
    verified_pairs: int = 0  # of those, kept after Jaccard verification (== candidate_pairs when off)

    @property
    def n_clusters(self) -> int:
        """Clusters with at least two members (each has exactly one kept record)."""
        return int((self.kept == self.node).sum())


def check_unique_ids(ids: np.ndarray) -> None:
    sorted_ids = np.sort(ids)
    clash = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(clash):
        raise ValueError(f"dedup: record id {sorted_ids[clash[0]]!r} occurs more than once in the input "
                         f"({len(clash)} repeated ids); ids must be unique")


def partitions(n: int, chunk: int) -> int:
    """Hash ranges (and node ranges) such that one task holds about ``chunk`` entries of a key kind."""
    return max(1, -(-n // max(chunk, 1)))


def decide(run_map, store, layout: list[dict[str, np.ndarray]], n: int, parts: int, *, exact: bool, bands: int,
           url: bool, threshold: float | None, clock: PhaseClock, index: dict | None = None) -> Decisions:
    """Decisions over pass 1's key files; ``layout``: per shard, key kind -> its files' partition offsets.

    ``run_map(fn, jobs)`` runs tasks on the executor; ``store``: the run's scratch store; ``index``: in a
    refresh, where the dedup index's signatures are and the MinHash settings (the pair tasks verify an
    index entry's pairs by signature).
    """
    bounds = spill.node_bounds(n, parts)
    files = lambda kind: [(spill.key_rel(s, kind), off[kind]) for s, off in enumerate(layout)]  # noqa: E731
    edges, nonhead = [], {}
    with clock("exact_url_buckets"):
        for kind in [k for k, on in ((EXACT, exact), (URL, url)) if on]:
            outs = [f"{kind}/p{p:05d}.bin" for p in range(parts)]
            jobs = [{"store": store, "parts": spill.slices(files(kind), p), "out": outs[p], "bounds": bounds}
                    for p in range(parts)]
            results = _run(run_map, exact_bucket, jobs, clock, "exact_worker_")
            edges += [(out, res["offsets"]) for out, res in zip(outs, results)]
            flags = np.zeros(n, bool)
            for out in outs:  # one task's list at a time
                flags[spill.load_array(store, out + ".nonheads.npy")] = True
            nonhead[kind] = flags
    candidates = kept_pairs = 0
    if bands and n:
        with clock("band_buckets"):
            bits = None
            if nonhead.get(EXACT) is not None and nonhead[EXACT].any():
                bits = "exact_nonheads.bits.npy"
                spill.save_array(store, bits, np.packbits(nonhead[EXACT], bitorder="little"))
            pair_files, jobs = [], []
            for b in range(bands):
                for p in range(parts):
                    out = f"{band_kind(b)}/p{p:05d}.bin"
                    pair_files.append(out)
                    jobs.append({"store": store, "parts": spill.slices(files(band_kind(b)), p), "nonheads": bits,
                                 "out": out, "bounds": bounds})
            results = _run(run_map, band_bucket, jobs, clock, "band_worker_")
            pair_files = list(zip(pair_files, (res["offsets"] for res in results)))
        with clock("pairs_verify"):
            outs = [f"pairs/q{q:05d}.bin" for q in range(parts)]
            jobs = [{"store": store, "parts": spill.slices(pair_files, q), "threshold": threshold, "out": outs[q],
                     "bounds": bounds, "index": index} for q in range(parts)]
            results = _run(run_map, pair_task, jobs, clock, "pair_worker_")
            edges += [(out, res["offsets"]) for out, res in zip(outs, results)]
            candidates = sum(res["candidates"] for res in results)
            kept_pairs = sum(res["verified"] for res in results)
    with clock("components"):
        nodes = components(run_map, store, edges, bounds, clock)
    node, kept = nodes["node"], nodes["label"]
    reason = np.full(len(node), None, dtype=object)
    dropped = kept != node
    # A verbatim copy of another record is an exact dup; else one whose URL another record has is a URL dup;
    # any other dropped record is a near dup.
    exact_copy = nonhead[EXACT][node] if EXACT in nonhead else np.zeros(len(node), bool)
    url_copy = nonhead[URL][node] if URL in nonhead else np.zeros(len(node), bool)
    reason[dropped & exact_copy] = EXACT_DUP
    reason[dropped & ~exact_copy & url_copy] = DUPLICATE_URL
    reason[dropped & ~exact_copy & ~url_copy] = NEAR_DUP
    return Decisions(node=node, kept=kept, size=nodes["size"], reason=reason, candidate_pairs=candidates,
                     verified_pairs=kept_pairs)


def _run(run_map, fn, jobs: list[dict], clock: PhaseClock, prefix: str) -> list[dict]:
    results = run_map(fn, jobs)
    for res in results:
        clock.add(res["phases"], prefix=prefix)
    return results
