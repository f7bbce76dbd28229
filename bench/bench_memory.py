"""Peak memory of ingest + dedup at 1x vs 8x input: bounded by the shard size, not the corpus size.

Input: WET files built by replicating the real WET sample's records with edits (each copy is a
different window of the original's lines plus a unique line, so exact dedup does not collapse them
and near-dup detection still has real work). Every file holds the same number of records (the
shard size); 8x input = 8x as many files. Each stage runs in its own child process with one worker
and reports its own peak RSS (ru_maxrss). ``ours`` = peak RSS at 8x, ``anchor`` = at 1x;
``ratio`` = anchor / ours (1.0: memory flat in corpus size; 0.125 would be linear).

``python -m bench memory`` (env: BENCH_MEMORY_RECORDS_PER_FILE (default 25000: 8x = 200k records,
about half an hour on 2 cores), BENCH_MEMORY_FILES_1X).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from fastwarc.warc import ArchiveIterator, WarcRecordType

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "memory"
RESULTS = REPO / "bench" / "results" / "memory.json"
WET = REPO / "samples/warc/cc-main-2020-50_whatsinthebox-sample.warc.wet.gz"
RECORDS_PER_FILE = int(os.environ.get("BENCH_MEMORY_RECORDS_PER_FILE", 25000))  # 8x = 200k records
FILES_1X = int(os.environ.get("BENCH_MEMORY_FILES_1X", 1))
CHILD = """
import json, resource, sys, time
from pipelines.cli import main
t = time.perf_counter()
rc = main([sys.argv[1]])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""


def real_texts() -> list[tuple[str, list[str]]]:
    out = []
    with open(WET, "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.conversion):
            lines = [ln for ln in rec.reader.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            if len(lines) >= 4:
                out.append((rec.headers["WARC-Target-URI"], lines))
    return out


def wet_record(url: str, text: str, n: int) -> bytes:
    body = text.encode()
    head = (f"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2020-11-23T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:bench-{n:09d}>\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body + b"\r\n\r\n"


def build_inputs(directory: Path, files: int, texts) -> int:
    """``files`` WET files of RECORDS_PER_FILE edited copies of the real records; returns the record count."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(files):
        with gzip.open(directory / f"CC-MAIN-2020-50-bench-{i:04d}.warc.wet.gz", "wb", compresslevel=1) as f:
            for _ in range(RECORDS_PER_FILE):
                url, lines = texts[n % len(texts)]
                copy = n // len(texts)
                start = copy % max(1, len(lines) - 3)
                window = lines[start:start + 12]  # a different slice of the page per copy: ~1 KB documents
                text = "\n".join(window + [f"bench copy {copy} of {url}"])
                f.write(wet_record(f"{url}#copy{copy}", text, n))
                n += 1
    return n


def run_stage(root: Path, stage: str) -> dict:
    env = {**os.environ, "PIPELINES_WORKSPACE": str(root), "PIPELINES_WORKERS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", CHILD, stage], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stderr.strip().splitlines()[-1])


def measure(scale: int, texts) -> dict:
    root = WORK / f"x{scale}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "samples").symlink_to(REPO / "samples")  # dedup's decontamination sets
    records = build_inputs(root / "inputs", FILES_1X * scale, texts)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(warc=[], wet=["inputs/*.warc.wet.gz"], curated={}, max_files=0)
    params["executor"]["workers"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ingest = run_stage(root, "ingest")
    # dedup reads data/filter: give it the ingest shards directly (the filter's models are not what is measured).
    (root / "data/filter").mkdir()
    for p in sorted((root / "data/ingest").glob("part-*.parquet")):
        shutil.copy(p, root / "data/filter" / p.name)
    dedup = run_stage(root, "dedup")
    result = {"scale": scale, "records": records, "files": FILES_1X * scale, "ingest": ingest, "dedup": dedup}
    shutil.rmtree(root)
    return result


def main() -> dict:
    texts = real_texts()
    t0 = time.perf_counter()
    one = measure(1, texts)
    eight = measure(8, texts)
    peak = lambda r: max(r["ingest"]["peak_rss_mb"], r["dedup"]["peak_rss_mb"])  # noqa: E731
    result = {
        "name": "memory",
        "metric": "peak RSS (MB) of ingest+dedup at 8x input (ours) vs 1x input (anchor); ratio = anchor/ours",
        "ours": round(peak(eight), 1),
        "anchor": round(peak(one), 1),
        "anchor_name": "same stages at 1x input",
        "ratio": round(peak(one) / peak(eight), 3),
        "input": f"{one['records']} vs {eight['records']} WET records ({RECORDS_PER_FILE} per file/shard), "
                 f"edited copies of {WET.name}",
        "peak_rss_mb": round(peak(eight), 1),
        "runs": [one, eight],
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
