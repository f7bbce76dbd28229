"""Peak memory of ingest + dedup at 1x vs 8x input: bounded by the shard size, not the corpus size.

Input: WET files built by replicating the real WET sample's records with edits (each copy is a
different window of the original's lines plus a unique line, so exact dedup does not collapse them
and near-dup detection still has real work). Most records are near-duplicates: the worst case for
dedup's global phase, which holds state per candidate pair (``dedup.kept_rows`` says how many
survive). Every file holds the same number of records (the shard size); 8x input = 8x as many files. Each stage runs in its own child process with one worker
and reports the peak RSS (ru_maxrss) of itself (the driver) and of its largest worker; dedup's
``merge_chunk`` is the shard size, so each of its global tasks holds about one shard's entries. ``ours`` = peak RSS at 8x, ``anchor`` = at 1x;
``ratio`` = anchor / ours (1.0: memory flat in corpus size; 0.125 would be linear).

Scale knobs (env): BENCH_MEMORY_RECORDS_PER_FILE (default 25000: 1x = 25k, 8x = 200k records),
BENCH_MEMORY_SCALE (default 8), BENCH_MEMORY_FILES_1X (default 1). ``python -m bench memory`` runs the
full scale (about 4 CPU-minutes: ~5 min wall idle, 14 min on a loaded 2-core box); e.g.
``BENCH_MEMORY_RECORDS_PER_FILE=3000 python -m bench memory`` validates it in a few minutes.
Each stage also reports its wall and CPU seconds (user+sys, itself and its children) and records/s by
both, so runs on a shared machine stay comparable.
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
SCALE = int(os.environ.get("BENCH_MEMORY_SCALE", 8))
FULL_RECORDS = 25000  # the default: what `python -m bench memory` measures
CHILD = """
import json, resource, sys, time
from pipelines.cli import main
t = time.perf_counter()
rc = main([sys.argv[1]])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "cpu_seconds": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024, "driver_peak_rss_mb": me.ru_maxrss / 1024}),
      file=sys.stderr)
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


def build_inputs(directory: Path, files: int, texts, per_file: int = RECORDS_PER_FILE) -> int:
    """``files`` WET files of ``per_file`` edited copies of the real records; returns the record count."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(files):
        with gzip.open(directory / f"CC-MAIN-2020-50-bench-{i:04d}.warc.wet.gz", "wb", compresslevel=1) as f:
            for _ in range(per_file):
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
    result = json.loads(done.stderr.strip().splitlines()[-1])
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


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
    # dedup's global tasks hold one partition of ~merge_chunk records: a partition per shard keeps every task's
    # memory at the shard size (the default, 1M, would make one partition of the whole input at both scales)
    params["dedup"]["merge_chunk"] = RECORDS_PER_FILE
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ingest = run_stage(root, "ingest")
    # dedup reads data/filter: give it the ingest shards directly (the filter's models are not what is measured).
    (root / "data/filter").mkdir()
    for p in sorted((root / "data/ingest").glob("part-*.parquet")):
        shutil.copy(p, root / "data/filter" / p.name)
    dedup = run_stage(root, "dedup")
    for r in (ingest, dedup):
        r["records_per_s"] = round(records / r["seconds"], 1)
        r["records_per_cpu_s"] = round(records / max(r["cpu_seconds"], 1e-9), 1)
    # How duplicate-heavy the input is matters: dedup's global phase holds state per near-duplicate candidate.
    dedup["kept_rows"] = json.loads((root / "data/dedup/_manifest.json").read_text())["totals"]["rows"]
    result = {"scale": scale, "records": records, "files": FILES_1X * scale, "ingest": ingest, "dedup": dedup}
    print(json.dumps(result), flush=True)
    shutil.rmtree(root)
    return result


def main() -> dict:
    texts = real_texts()
    t0 = time.perf_counter()
    one = measure(1, texts)
    big = measure(SCALE, texts)
    peak = lambda r: max(r["ingest"]["peak_rss_mb"], r["dedup"]["peak_rss_mb"])  # noqa: E731
    result = {
        "name": "memory",
        "metric": f"peak RSS (MB) of ingest+dedup at {SCALE}x input (ours) vs 1x input (anchor); ratio = anchor/ours "
                  f"(1.0 = flat in corpus size, {1 / SCALE:.3f} = linear)",
        "ours": round(peak(big), 1),
        "anchor": round(peak(one), 1),
        "anchor_name": "same stages at 1x input",
        "ratio": round(peak(one) / peak(big), 3),
        "ratio_by_stage": {s: round(one[s]["peak_rss_mb"] / big[s]["peak_rss_mb"], 3) for s in ("ingest", "dedup")},
        "dedup_driver_peak_rss_mb": {"1x": one["dedup"]["driver_peak_rss_mb"], f"{SCALE}x": big["dedup"]["driver_peak_rss_mb"]},
        "input": f"{one['records']} vs {big['records']} WET records ({RECORDS_PER_FILE} per file/shard), "
                 f"edited copies of {WET.name}",
        "peak_rss_mb": round(peak(big), 1),
        "full_scale": RECORDS_PER_FILE == FULL_RECORDS and SCALE == 8 and FILES_1X == 1,
        "full_scale_command": "python -m bench memory",
        "runs": [one, big],
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
