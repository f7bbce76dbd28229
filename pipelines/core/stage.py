"""The shard-stage runner: input shards/files -> output shards, resumable and audited.

A stage supplies ``process(task) -> ShardResult`` (kept records, removed
records with their reasons, stats). The runner owns everything else:
skipping shards that are already complete, atomic writes, ``removed/``,
per-shard manifest fragments, ``_stats.parquet``, ``_manifest.json``, and
removing leftovers of an earlier run with a different shard layout.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa

from pipelines.core.atomic import remove_stale_temps
from pipelines.core.executor import get_executor
from pipelines.core.faults import fault_point
from pipelines.core.manifest import FRAGMENTS, MANIFEST, file_entry, fragment_is_complete, load_fragment, write_fragment, write_manifest
from pipelines.core.schema import DROP_FIELDS
from pipelines.core.shards import write_shard
from pipelines.core.stats import ShardStats, length_histogram, write_stats

log = logging.getLogger(__name__)
REMOVED = "removed"
STATS = "_stats.parquet"


@dataclass
class ShardTask:
    stage: str
    shard: str  # output shard file name, e.g. part-00000.parquet
    inputs: list[str]  # input files (previous stage shards, raw files, s3 URIs)
    out_dir: str
    params: dict
    params_hash: str
    fingerprints: dict[str, str] = field(default_factory=dict)
    context: dict = field(default_factory=dict)  # stage-specific shared data (small, picklable)


@dataclass
class ShardResult:
    kept: pa.Table
    removed: pa.Table | None
    stats: ShardStats


def removed_table(records: pa.Table, reasons: list[str], details: list[str | None]) -> pa.Table:
    """Attach a reason (and JSON detail) to each dropped record; the record itself stays whole."""
    t = records.append_column(DROP_FIELDS[0], pa.array(reasons, pa.string()))
    return t.append_column(DROP_FIELDS[1], pa.array(details, pa.string()))


def finish_stats(stats: ShardStats, kept: pa.Table) -> ShardStats:
    """Fill out-side numbers from the kept table (records/bytes out, length histogram)."""
    if "text" in kept.column_names and kept.num_rows:
        import pyarrow.compute as pc

        lengths = pc.utf8_length(kept.column("text")).to_numpy(zero_copy_only=False)
        stats.len_hist = length_histogram(lengths)
        stats.bytes_out = int(pc.sum(pc.binary_length(kept.column("text"))).as_py() or 0)
    else:
        stats.len_hist = length_histogram([])
    stats.records_out = kept.num_rows
    return stats


def write_shard_outputs(task: ShardTask, result: ShardResult) -> dict:
    """Write a shard's kept and removed tables, then its manifest fragment (last: it marks completion)."""
    out = Path(task.out_dir)
    files = {}
    shard_path = out / task.shard
    write_shard(shard_path, result.kept)
    files[task.shard] = file_entry(shard_path, rows=result.kept.num_rows)
    if result.removed is not None and result.removed.num_rows:
        rpath = out / REMOVED / task.shard
        write_shard(rpath, result.removed)
        files[f"{REMOVED}/{task.shard}"] = file_entry(rpath, rows=result.removed.num_rows)
    stats = result.stats
    if stats.records_in != stats.records_out + stats.records_dropped:
        raise AssertionError(
            f"{task.stage}/{task.shard}: records_in={stats.records_in} != out={stats.records_out} + dropped={stats.records_dropped}"
        )
    fragment = {
        "shard": task.shard,
        "inputs": task.fingerprints,
        "params_hash": task.params_hash,
        "files": files,
        "stats": stats.to_dict(),
    }
    write_fragment(out, task.shard, fragment)
    fault_point("shard_done")
    return fragment


def _run_one(job: tuple[Callable[[ShardTask], ShardResult], ShardTask]) -> dict:
    process, task = job
    out = Path(task.out_dir)
    previous = load_fragment(out, task.shard)
    if fragment_is_complete(out, previous, task.fingerprints, task.params_hash):
        log.info("%s: %s already complete, skipped", task.stage, task.shard)
        previous["_skipped"] = True
        return previous
    result = process(task)
    finish_stats(result.stats, result.kept)
    return write_shard_outputs(task, result)


def clean_output_dir(out_dir: Path, keep_shards: set[str]) -> None:
    """Remove shards/fragments not produced by this run (a previous layout), and crash leftovers."""
    remove_stale_temps(out_dir)
    for sub in (out_dir, out_dir / REMOVED):
        if sub.exists():
            for p in sub.glob("part-*.parquet"):
                if p.name not in keep_shards:
                    p.unlink()
    frag_dir = out_dir / FRAGMENTS
    if frag_dir.exists():
        for p in frag_dir.glob("*.json"):
            if p.name[: -len(".json")] not in keep_shards:
                p.unlink()


def finalize(out_dir: Path, stage: str, params_hash: str, fragments: list[dict], known_reasons: list[str],
             extra_manifest: dict | None = None) -> dict:
    fragments = sorted(fragments, key=lambda f: f["shard"])
    # A shard's removed file may be gone if a later run of the same shard kept everything.
    for f in fragments:
        f.pop("_skipped", None)
        if f"{REMOVED}/{f['shard']}" not in f["files"]:
            stale = out_dir / REMOVED / f["shard"]
            if stale.exists():
                stale.unlink()
    write_stats(out_dir / STATS, [ShardStats.from_dict(f["stats"]) for f in fragments], known_reasons)
    return write_manifest(out_dir, stage, params_hash, fragments, extra_manifest)


def run_shard_stage(
    stage: str,
    tasks: list[ShardTask],
    process: Callable[[ShardTask], ShardResult],
    *,
    executor_params: dict | None = None,
    known_reasons: list[str] | None = None,
    extra_manifest: dict | None = None,
) -> dict:
    """Run ``process`` over every task (skipping complete shards), then write stats and the manifest."""
    fragments = run_shards(stage, tasks, process, executor_params=executor_params)
    return finalize(Path(tasks[0].out_dir), stage, tasks[0].params_hash, fragments, known_reasons or [], extra_manifest)


def run_shards(stage: str, tasks: list[ShardTask], process: Callable[[ShardTask], ShardResult], *,
               executor_params: dict | None = None) -> list[dict]:
    """The shard part of :func:`run_shard_stage`: every task's fragment, for a stage whose manifest
    needs numbers from them (it calls :func:`finalize` itself)."""
    if not tasks:
        raise ValueError(f"{stage}: no input shards/files to process")
    out_dir = Path(tasks[0].out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_output_dir(out_dir, {t.shard for t in tasks})
    fragments = get_executor(executor_params).map(_run_one, [(process, t) for t in tasks])
    skipped = sum(1 for f in fragments if f.get("_skipped"))
    log.info("%s: %d shards, %d skipped as complete", stage, len(fragments), skipped)
    return fragments


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


__all__ = [
    "MANIFEST", "REMOVED", "STATS", "ShardResult", "ShardTask", "finalize", "finish_stats", "removed_table",
    "run_shard_stage", "run_shards", "write_shard_outputs", "clean_output_dir",
]
