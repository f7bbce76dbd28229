"""The recurring refresh: what adding a crawl to a built corpus costs, against building both crawls in full.

Two crawls of equal size (WET files of documents cut from real English web pages, as in bench_scale;
crawl B recaptures ``BENCH_REFRESH_OVERLAP`` of crawl A's pages, same URL and text), the demo's
wikipedia / books / news samples, the data stages ingest -> pack, each as ``python -m pipelines
<stage>`` in its own process (as dvc runs it), the local pool with 2 workers:

- (a) version 1 from crawl A, then the refresh adding crawl B: the refresh step is timed;
- (b) one full build of A + B on a fresh workspace.

``ours`` / ``anchor``: wall seconds of (b) / of the refresh, as ``ratio`` = full / refresh (higher = the
refresh is cheaper; the target ``refresh <= 0.6x full`` is ratio >= 1.67); CPU seconds likewise
(``ratio_cpu``), per stage in ``runs``. ``dedup_kept``: how many records dedup keeps both ways and whether
they are the same records. Not in general, with scope global: the full build's keep policy may keep B's copy
of a page where the refresh keeps the earlier one, A's; a refresh verifies a new record against an index
entry by signature agreement (an estimate), a full build by the true Jaccard, so pairs near the threshold
can go either way; and star clusters form around other heads (docs/refresh.md "Two dedup scopes").

``index_lookup``: the dedup stage alone, refreshing one new crawl of ``N`` records against a dedup index
of 1x and 8x N records: CPU seconds per new record (target: within 20%, flat as the index grows), the median
of ``BENCH_REFRESH_LOOKUP_REPEAT`` runs of the same refresh from the same index.

The filter's fastText model is off (as in bench_scale): its percentile threshold is taken over all
records, so with it on every filter shard re-runs when a crawl is added.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.bench_memory import wet_record
from bench.bench_scale import CHILD, english_pages

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "refresh"
RESULTS = REPO / "bench" / "results" / "refresh.json"
PER_FILE = int(os.environ.get("BENCH_REFRESH_PER_FILE", 1000))
FILES = int(os.environ.get("BENCH_REFRESH_FILES", 8))  # per crawl
OVERLAP = float(os.environ.get("BENCH_REFRESH_OVERLAP", 0.2))
LOOKUP_N = int(os.environ.get("BENCH_REFRESH_LOOKUP_N", 4000))
LOOKUP_REPEAT = int(os.environ.get("BENCH_REFRESH_LOOKUP_REPEAT", 3))
STAGES = ["ingest", "filter", "dedup", "select", "mix", "pack"]
CRAWL_A, CRAWL_B = "CC-MAIN-2024-18", "CC-MAIN-2024-22"


def document(pages: list[list[str]], n: int) -> str:
    import numpy as np

    rng = np.random.default_rng([7, n])
    parts = []
    for p in rng.choice(len(pages), size=3, replace=False).tolist():
        start = int(rng.integers(0, max(1, len(pages[p]) - 8)))
        parts += pages[p][start:start + 8]
    return "\n".join(parts)


def write_crawl(directory: Path, crawl: str, first: int, pages) -> int:
    """``FILES`` WET files of ``PER_FILE`` documents numbered from ``first`` (document n: same URL and text in
    any crawl)."""
    import gzip

    directory.mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        with gzip.open(directory / f"{crawl}-bench-{i:04d}.warc.wet.gz", "wb", compresslevel=1) as f:
            for n in range(first + i * PER_FILE, first + (i + 1) * PER_FILE):
                f.write(wet_record(f"https://bench.example/{n}", document(pages, n), n))
    return FILES * PER_FILE


def workspace(name: str, crawls: list[str]) -> Path:
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "samples").symlink_to(REPO / "samples")
    (root / "inputs").symlink_to(WORK / "inputs")
    set_crawls(root, crawls)
    return root


def set_crawls(root: Path, crawls: list[str]) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    curated = params["ingest"]["curated"]
    params["ingest"].update(warc=[], wet=[f"inputs/{c}-bench-*.warc.wet.gz" for c in crawls], max_files=0,
                            curated={k: curated[k] for k in ("wikipedia", "books", "news")})
    params["filter"]["quality_model"]["enabled"] = False
    params["filter"]["language"]["min_score"] = 0.5
    params["executor"] = {"kind": "local", "workers": 2, "start_method": "fork"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stages(root: Path, stages: list[str] = STAGES) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k != "PIPELINES_WORKERS"}, "PIPELINES_WORKSPACE": str(root),
           "OMP_WAIT_POLICY": "PASSIVE"}
    out, t0 = {}, time.perf_counter()
    for stage in stages:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, stage], cwd=root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{root.name}/{stage} failed:\n{done.stderr[-3000:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss = json.loads(done.stderr.strip().splitlines()[-1])["driver_peak_rss_mb"]
        out[stage] = {"wall_s": round(time.perf_counter() - t, 2),
                      "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
                      "driver_peak_rss_mb": round(rss, 1)}
    return {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(sum(s["cpu_s"] for s in out.values()), 2),
            "stages": out}


def kept(root: Path) -> dict:
    import pyarrow.parquet as pq

    ids = set()
    for p in (root / "data" / "dedup").glob("part-*.parquet"):
        ids.update(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return {"dedup_kept": len(ids), "ids": ids}


def index_lookup(pages) -> dict:
    """Dedup alone: one new crawl of LOOKUP_N records against an index of 1x and 8x LOOKUP_N records."""
    import pyarrow as pa

    from pipelines.core.schema import make_record_id
    from pipelines.core.shards import write_shard

    def records(source: str, first: int, n: int) -> pa.Table:
        return pa.Table.from_pylist([{"id": make_record_id(source, str(i)), "url": f"https://bench.example/{i}",
                                      "source": source, "text": document(pages, i)} for i in range(first, first + n)])

    out = {}
    for factor in (1, 8):
        root = workspace(f"lookup_{factor}x", [])
        for s in range(factor):  # the history: `factor` crawls of LOOKUP_N records (shards of 2000)
            t = records(f"cc-main-2023-{s + 10:02d}", 10_000_000 * (s + 1), LOOKUP_N)
            for k in range(0, LOOKUP_N, 2000):
                write_shard(root / "data" / "filter" / f"part-old{s:02d}-{k:06d}.parquet", t.slice(k, 2000))
        run_stages(root, ["dedup"])
        new = records("cc-main-2024-22", 0, LOOKUP_N)  # the new crawl (same size each time)
        for k in range(0, LOOKUP_N, 2000):
            write_shard(root / "data" / "filter" / f"part-new-{k:06d}.parquet", new.slice(k, 2000))
        built = root / "dedup-built"
        shutil.copytree(root / "data" / "dedup", built)
        runs = []
        for _ in range(LOOKUP_REPEAT):  # the same refresh from the same index: the median, as runs are seconds
            shutil.rmtree(root / "data" / "dedup")
            shutil.copytree(built, root / "data" / "dedup")
            runs.append(run_stages(root, ["dedup"])["stages"]["dedup"])
        r = sorted(runs, key=lambda x: x["cpu_s"])[len(runs) // 2]
        out[f"{factor}x"] = {"index_records": factor * LOOKUP_N, "new_records": LOOKUP_N, **r,
                             "cpu_s_runs": [x["cpu_s"] for x in runs],
                             "cpu_ms_per_new_record": round(1000 * r["cpu_s"] / LOOKUP_N, 3)}
    out["growth"] = round(out["8x"]["cpu_ms_per_new_record"] / out["1x"]["cpu_ms_per_new_record"], 3)
    out["target"] = "growth <= 1.2 (flat within 20%)"
    return out


def main() -> dict:
    t0 = time.perf_counter()
    pages = english_pages()
    shutil.rmtree(WORK, ignore_errors=True)
    n_a = write_crawl(WORK / "inputs", CRAWL_A, 0, pages)
    n_b = write_crawl(WORK / "inputs", CRAWL_B, int(n_a * (1 - OVERLAP)), pages)

    inc = workspace("refresh", [CRAWL_A])
    v1 = run_stages(inc)
    set_crawls(inc, [CRAWL_A, CRAWL_B])
    refresh = run_stages(inc)
    dedup_manifest = json.loads((inc / "data" / "dedup" / "_manifest.json").read_text())
    full_root = workspace("full", [CRAWL_A, CRAWL_B])
    full = run_stages(full_root)
    a, b = kept(inc), kept(full_root)
    lookup = index_lookup(pages)
    result = {
        "name": "refresh",
        "metric": "wall seconds of a full build of crawls A + B / of the refresh adding B to version 1 (A), data "
                  "stages ingest -> pack, local pool with 2 workers; ratio = full / refresh (target >= 1.67, "
                  "i.e. refresh <= 0.6x full)",
        "ours": refresh["wall_s"],
        "anchor": full["wall_s"],
        "anchor_name": "full rebuild of A + B",
        "ratio": round(full["wall_s"] / refresh["wall_s"], 3),
        "ratio_cpu": round(full["cpu_s"] / refresh["cpu_s"], 3),
        "refresh_was_incremental": "refresh" in dedup_manifest,
        "dedup_kept": {"refresh": a["dedup_kept"], "full": b["dedup_kept"], "same_ids": a["ids"] == b["ids"]},
        "input": f"crawl A {n_a} and crawl B {n_b} WET records ({PER_FILE} per file; B recaptures {OVERLAP:.0%} of A's "
                 f"pages), plus the demo's wikipedia/books/news samples; filter fastText model off",
        "peak_rss_mb": max(s["driver_peak_rss_mb"] for r in (v1, refresh, full) for s in r["stages"].values()),
        "runs": {"version_1": v1, "refresh": refresh, "full": full},
        "index_lookup": lookup,
        "machine": f"{os.cpu_count()} cores",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(WORK, ignore_errors=True)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
