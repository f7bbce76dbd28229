"""Per-core rates of dedup's global step (bucket, pair and component tasks) on synthetic pass-1 key files.

Not a ``bench_*`` benchmark (it has no anchor): it measures what DEDUP_SCALE_NOTE.md quotes. Pass 1 is
skipped: key files of ``--n`` records in ``--shards`` shards are written as pass 1 writes them
(pipelines.dedup.pass1.write_keys), with planted duplicates: ``--exact`` of the records copy another
record's text (same exact key and bands), ``--near`` share a random half of another record's bands.
Then pipelines.dedup.clusters.decide runs with one worker (tasks in this process: CPU seconds are one
core's) and the phases are printed as entries (or pairs, edges) per CPU second. Verification is off
(its rate depends on the texts: see the dedup stage's ``pair_worker_verify`` phase on a real corpus).

    python -m bench.dedup_global_rates --n 2000000 --parts 4
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pipelines.core.executor import LocalExecutor
from pipelines.core.store import LocalStore
from pipelines.dedup import spill
from pipelines.dedup.clusters import decide
from pipelines.dedup.pass1 import write_keys
from pipelines.dedup.timing import PhaseClock

BANDS = 14


def synthetic_keys(n: int, exact: float, near: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64)
    bands = rng.integers(0, 2**64, size=(n, BANDS), dtype=np.uint64)
    copies = rng.random(n)
    src = rng.integers(0, n, n)
    ex = np.flatnonzero(copies < exact)
    keys[ex], bands[ex] = keys[src[ex]], bands[src[ex]]
    nr = np.flatnonzero((copies >= exact) & (copies < exact + near))
    shared = rng.random((len(nr), BANDS)) < 0.5
    bands[nr] = np.where(shared, bands[src[nr]], bands[nr])
    return keys, bands


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--exact", type=float, default=0.1)
    ap.add_argument("--near", type=float, default=0.1)
    args = ap.parse_args()
    keys, bands = synthetic_keys(args.n, args.exact, args.near)
    rank = np.random.default_rng(1).permutation(args.n)
    cuts = np.linspace(0, args.n, args.shards + 1).astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="dedup-rates-", dir=Path.cwd()) as d:
        store = LocalStore(d)
        layout = [write_keys(store, s, spill.hash_bounds(args.parts), rank[a:b], np.ones(b - a, bool), exact=keys[a:b],
                             url=None, bands=bands[a:b], shingles=(s, [], []))
                  for s, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
        clock = PhaseClock()
        result = decide(LocalExecutor(workers=1).map, store, layout, args.n, args.parts,
                        spill.node_bounds(args.n, args.parts), exact=True, bands=BANDS, url=False, threshold=None,
                        clock=clock)
    phases = clock.rounded()
    cpu = {k: max(v["cpu_s"], 1e-9) for k, v in phases.items()}
    clustered = result.clustered
    rates = {
        "exact_entries_per_cpu_s": args.n / cpu["exact_url_buckets"],
        "band_entries_per_cpu_s": BANDS * args.n / cpu["band_buckets"],
        "candidate_pairs_per_cpu_s": result.candidate_pairs / cpu["pairs_verify"],
        "clustered_records_per_cpu_s": clustered / cpu["components"],
        "global_records_per_cpu_s": args.n / sum(cpu[k] for k in ("exact_url_buckets", "band_buckets",
                                                                   "pairs_verify", "components")),
    }
    print(json.dumps({"n": args.n, "shards": args.shards, "parts": args.parts, "candidate_pairs": result.candidate_pairs,
                      "clustered_records": clustered, "clusters": result.n_clusters,
                      "rates": {k: round(v) for k, v in rates.items()}, "phases": phases}, indent=1))


if __name__ == "__main__":
    main()
