"""Dedup speed and memory: our stage vs datatrove's 4-stage MinHash pipeline vs datasketch MinHashLSH.

Same perturbed corpus from real text (bench/dedup_corpus.py), same shingles (word 5-grams) and
LSH layout (14 bands x 8 rows). Each system runs in its own subprocess; wall time covers reading
the parquet shards to writing the deduplicated output; peak RSS is the largest sum over the process
tree (parent + workers), sampled every 50 ms. Ours runs with decontamination off (dedup only, as
the others) and 2 workers; datatrove with 2 workers; datasketch is single-process (it has no
parallel mode). A memory curve runs ours alone at 1x, 4x, 16x input with a fixed shard size.
CPU seconds (the process tree's, from RUSAGE_CHILDREN) are reported next to wall time, so rates
stay comparable on a loaded machine; ours also reports its phase breakdown (pipelines.dedup.timing).

Scale knobs: ``--n`` / BENCH_DEDUP_N (default 50000 records) and ``--curve-base`` /
BENCH_DEDUP_CURVE_BASE (default 4000: curve at 4k, 16k, 64k records).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import resource

import psutil
import pyarrow as pa
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARD_RECORDS = 2000
WORKERS = 2
NGRAM, BANDS, ROWS = 5, 14, 8


def write_input(root: Path, n: int, seed: int = 0) -> float:
    from bench.dedup_corpus import build_corpus
    from pipelines.core.shards import shard_name, write_shard

    records = build_corpus(n, seed=seed)
    out = root / "data" / "filter"
    for s, start in enumerate(range(0, n, SHARD_RECORDS)):
        write_shard(out / shard_name(s), pa.Table.from_pylist(records[start:start + SHARD_RECORDS]))
    return sum(len(r["text"]) for r in records) / n


# ---------------------------------------------------------------- children (one system each)

def child_ours(root: Path) -> dict:
    os.environ["PIPELINES_WORKSPACE"] = str(root)
    os.environ["PIPELINES_WORKERS"] = str(WORKERS)
    import logging

    from pipelines import stages

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dedup"]["decontam"]["enabled"] = False
    params["dedup"]["minhash"].update(ngram=NGRAM, bands=BANDS, rows=ROWS)
    timings = PhaseTimings()
    logging.getLogger("pipelines.dedup.stage").addHandler(timings)
    logging.getLogger("pipelines.dedup.stage").setLevel(logging.INFO)
    s = stages.run("dedup", params)
    return {"records_out": s["records_out"], "removed": s["exact_dup"] + s["near_dup"], "phases": timings.phases}


class PhaseTimings:
    """Picks the stage's "phase timings" log line (wall and CPU seconds per phase) out of its log."""

    level = 0

    def __init__(self):
        self.phases: dict = {}

    def handle(self, record) -> None:
        if "phase timings" in str(record.msg) and record.args:
            self.phases = json.loads(record.args[-1])


def child_datatrove(root: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash

    # datatrove 0.10.1 passes str to xxhash, which the installed xxhash rejects: encode first (same hash as intended).
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)
    src, work = str(root / "data" / "filter"), root / "datatrove"
    n_files = len(list((root / "data" / "filter").glob("part-*.parquet")))
    cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=BANDS, hashes_per_bucket=ROWS, n_grams=NGRAM)
    common = {"workers": WORKERS, "start_method": "fork"}
    steps = [
        LocalPipelineExecutor([ParquetReader(src, glob_pattern="part-*.parquet"), MinhashDedupSignature(str(work / "sigs"), config=cfg)],
                              tasks=n_files, logging_dir=str(work / "logs1"), **common),
        LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
                              tasks=BANDS, logging_dir=str(work / "logs2"), **common),
        LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=cfg)],
                              tasks=1, logging_dir=str(work / "logs3"), **common),
        LocalPipelineExecutor([ParquetReader(src, glob_pattern="part-*.parquet"), MinhashDedupFilter(str(work / "remove_ids")),
                               ParquetWriter(str(work / "out"))], tasks=n_files, logging_dir=str(work / "logs4"), **common),
    ]
    for step in steps:
        step.run()
    import pyarrow.parquet as pq

    kept = sum(pq.read_metadata(p).num_rows for p in (work / "out").rglob("*.parquet"))
    return {"records_out": kept}


def child_datasketch(root: Path) -> dict:
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from pipelines.core.shards import iter_batches, list_shards, shard_name, write_shard
    from pipelines.dedup.normalize import words

    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    ids, sigs = [], []
    for path in list_shards(root / "data" / "filter"):
        for batch in iter_batches(path, columns=["id", "text"]):
            for rid, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                w = words(text)
                sh = {" ".join(w[i:i + NGRAM]).encode() for i in range(max(len(w) - NGRAM + 1, 1))}
                m = MinHash(num_perm=BANDS * ROWS, seed=1)
                m.update_batch(list(sh))
                lsh.insert(rid, m)
                ids.append(rid)
                sigs.append(m)
    parent = {i: i for i in ids}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for rid, m in zip(ids, sigs):
        for other in lsh.query(m):
            a, b = find(rid), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    keep = {i for i in ids if find(i) == i}
    out = root / "datasketch"
    for s, path in enumerate(list_shards(root / "data" / "filter")):
        t = pa.Table.from_batches(list(iter_batches(path)))
        mask = np.array([i in keep for i in t.column("id").to_pylist()])
        write_shard(out / shard_name(s), t.filter(pa.array(mask)))
    return {"records_out": len(keep)}


CHILDREN = {"ours": child_ours, "datatrove": child_datatrove, "datasketch": child_datasketch}


# ---------------------------------------------------------------- parent: time + tree RSS

def measure(system: str, root: Path, timeout: float = 3600) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_dedup", "--child", system, str(root)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def poll():
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - start
    th.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and every worker it reaped
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"system": system, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            **result}


def main(n: int | None = None, curve_base: int | None = None, scales=(1, 4, 16)) -> dict:
    n = n or int(os.environ.get("BENCH_DEDUP_N", 50000))
    curve_base = curve_base or int(os.environ.get("BENCH_DEDUP_CURVE_BASE", 4000))
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    load_start = os.getloadavg()[0]
    try:
        root = tmp / "cmp"
        avg_chars = write_input(root, n)
        runs = {s: measure(s, root) for s in ("ours", "datatrove", "datasketch")}
        for r in runs.values():
            r["docs_per_s"] = round(n / r["wall_s"], 1)
            r["docs_per_cpu_s"] = round(n / r["cpu_s"], 1)
        curve = []
        for scale in scales:
            croot = tmp / f"curve{scale}"
            write_input(croot, curve_base * scale, seed=1)
            m = measure("ours", croot)
            curve.append({"scale": scale, "records": curve_base * scale, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
                          "docs_per_s": round(curve_base * scale / m["wall_s"], 1),
                          "docs_per_cpu_s": round(curve_base * scale / m["cpu_s"], 1), "peak_rss_mb": m["peak_rss_mb"]})
            shutil.rmtree(croot)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, dt, ds = runs["ours"], runs["datatrove"], runs["datasketch"]
    result = {
        "name": "dedup",
        "metric": "docs_per_s end to end (parquet in -> deduplicated parquet out)",
        "ours": ours["docs_per_s"],
        "anchor": dt["docs_per_s"],
        "anchor_name": "datatrove 0.10.1 MinhashDedupSignature/Buckets/Cluster/Filter, 2 workers",
        "ratio": round(ours["docs_per_s"] / dt["docs_per_s"], 2),
        "ratio_cpu": round(ours["docs_per_cpu_s"] / dt["docs_per_cpu_s"], 2),
        "ratio_vs_datasketch": round(ours["docs_per_s"] / ds["docs_per_s"], 2),
        "ratio_cpu_vs_datasketch": round(ours["docs_per_cpu_s"] / ds["docs_per_cpu_s"], 2),
        "input": f"{n} records from real sentences (avg {avg_chars:.0f} chars; 10% exact copies, 10% near copies), "
                 f"word {NGRAM}-grams, {BANDS}x{ROWS} LSH, shards of {SHARD_RECORDS}",
        "peak_rss_mb": ours["peak_rss_mb"],
        "phases_ours": ours.pop("phases"),
        "runs": runs,
        "memory_curve_ours": curve,
        "memory_curve_flat": max(c["peak_rss_mb"] for c in curve) <= 1.25 * curve[0]["peak_rss_mb"],
        "full_scale_command": "python -m bench dedup  (BENCH_DEDUP_N=50000, BENCH_DEDUP_CURVE_BASE=4000)",
        "machine": f"{os.cpu_count()} cores, shared (load avg at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f})",
    }
    for c in curve:  # the curve's runs report phases too; keep the JSON small
        c.pop("phases", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dedup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=sorted(CHILDREN))
    ap.add_argument("root", nargs="?")
    ap.add_argument("--n", type=int)
    ap.add_argument("--curve-base", type=int)
    args = ap.parse_args()
    if args.child:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(CHILDREN[args.child](Path(args.root))))
    else:
        main(args.n, args.curve_base)
