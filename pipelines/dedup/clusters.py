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
The driver holds no per-record data: every step's output stays in scratch,
partitioned by node range, for the finalize tasks (pipelines.dedup.finalize),
which turn clusters into each shard's drops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.dedup import spill
from pipelines.dedup.buckets import band_bucket, exact_bucket, nonhead_bits, nonheads_rel
from pipelines.dedup.components import components
from pipelines.dedup.pass1 import EXACT, URL, band_kind
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.verify import pair_task

EXACT_DUP = "exact_dup"
NEAR_DUP = "near_dup"
DUPLICATE_URL = "duplicate_url"


@dataclass
class Decisions:
    """Where the global pass left its decisions (in scratch, by node range: the finalize tasks read them)."""

    nodes: list[str]  # per node range: its clustered nodes (pipelines.dedup.components NODE_DTYPE)
    nonheads: dict[str, list[tuple[str, np.ndarray]]]  # exact / url: files of ranks that are a group's non-head
    clustered: int = 0  # records in clusters of two or more
    n_clusters: int = 0  # such clusters (each keeps exactly one record)
    candidate_pairs: int = 0  # distinct LSH candidate pairs
    verified_pairs: int = 0  # of those, kept after Jaccard verification (== candidate_pairs when off)


def partitions(n: int, chunk: int) -> int:
    """Hash ranges (and node ranges) such that one task holds about ``chunk`` entries of a key kind."""
    return max(1, -(-n // max(chunk, 1)))


def decide(run_map, store, layout: list[dict[str, np.ndarray]], n: int, parts: int, bounds: np.ndarray, *,
           exact: bool, bands: int, url: bool, threshold: float | None, clock: PhaseClock,
           index: dict | None = None) -> Decisions:
    """Decisions over pass 1's key files; ``layout``: per shard, key kind -> its files' partition offsets
    (``parts`` hash ranges); ``bounds``: the inner cuts of the node (rank) ranges.

    ``run_map(fn, jobs)`` runs tasks on the executor; ``store``: the run's scratch store; ``index``: in a
    refresh, where the dedup index's signatures are and the MinHash settings (the pair tasks verify an
    index entry's pairs by signature).
    """
    files = lambda kind: [(spill.key_rel(s, kind), off[kind]) for s, off in enumerate(layout)]  # noqa: E731
    edges, nonheads = [], {}
    with clock("exact_url_buckets"):
        for kind in [k for k, on in ((EXACT, exact), (URL, url)) if on]:
            outs = [f"{kind}/p{p:05d}.bin" for p in range(parts)]
            jobs = [{"store": store, "parts": spill.slices(files(kind), p), "out": outs[p], "bounds": bounds}
                    for p in range(parts)]
            results = _run(run_map, exact_bucket, jobs, clock, "exact_worker_")
            edges += [(out, res["offsets"]) for out, res in zip(outs, results)]
            nonheads[kind] = [(nonheads_rel(out), res["nonheads"]) for out, res in zip(outs, results)]
    candidates = kept_pairs = 0
    if bands and n:
        with clock("band_buckets"):
            bits, exact_files = None, [(rel, int(off[-1])) for rel, off in nonheads.get(EXACT, []) if off[-1]]
            if exact_files:  # one task gathers them: the driver holds no per-record flags
                bits = "exact_nonheads.bits.npy"
                run_map(nonhead_bits, [{"store": store, "n": n, "files": exact_files, "out": bits}])
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
            outs = [f"pairs/q{q:05d}.bin" for q in range(len(bounds) + 1)]
            jobs = [{"store": store, "parts": spill.slices(pair_files, q), "threshold": threshold, "out": outs[q],
                     "bounds": bounds, "index": index} for q in range(len(bounds) + 1)]
            results = _run(run_map, pair_task, jobs, clock, "pair_worker_")
            edges += [(out, res["offsets"]) for out, res in zip(outs, results)]
            candidates = sum(res["candidates"] for res in results)
            kept_pairs = sum(res["verified"] for res in results)
    with clock("components"):
        found = components(run_map, store, edges, bounds, clock)
    return Decisions(nodes=found["nodes"], nonheads=nonheads, clustered=found["clustered"],
                     n_clusters=found["clusters"], candidate_pairs=candidates, verified_pairs=kept_pairs)


def _run(run_map, fn, jobs: list[dict], clock: PhaseClock, prefix: str) -> list[dict]:
    results = run_map(fn, jobs)
    for res in results:
        clock.add(res["phases"], prefix=prefix)
    return results
