"""Dedup stage: data/filter -> data/dedup.

Pass 1 (parallel, per input shard): read id + text, return only ids, exact
hashes and LSH band hashes. Pass 2 (global, in this process): duplicate
clusters over all records (pipelines.dedup.clusters). Pass 3 (parallel, per
shard, through the core runner): write kept records with ``dup_of`` /
``dup_cluster`` columns and dropped ones under removed/ with their reason.
Every output shard depends on every input shard (a duplicate may live
anywhere), so each shard's fingerprints cover all inputs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.executor import get_executor
from pipelines.core.hashing import params_hash, sha256_file
from pipelines.core.manifest import fragment_is_complete, load_fragment
from pipelines.core.shards import iter_batches, list_shards, read_shard
from pipelines.core.stage import ShardResult, ShardTask, removed_table, run_shard_stage
from pipelines.core.stats import ShardStats
from pipelines.dedup.clusters import EXACT_DUP, NEAR_DUP, decide
from pipelines.dedup.exact import exact_hashes
from pipelines.dedup.minhash import MinHasher
from pipelines.dedup.normalize import words

log = logging.getLogger(__name__)
STAGE = "dedup"
INPUT_DIR = "data/filter"
OUTPUT_DIR = "data/dedup"
REASONS = [EXACT_DUP, NEAR_DUP]
KEEP_POLICIES = ("smallest_id",)
DUP_COLUMNS = ("dup_of", "dup_cluster")


def dedup_config(params: dict) -> dict:
    """The validated ``dedup`` section with defaults filled in (all of it decides what is dropped)."""
    cfg = section(params, STAGE)
    exact = {"enabled": True, "lowercase": True, "strip_punctuation": True, **(cfg.get("exact") or {})}
    minhash = {"enabled": True, "ngram": 5, "bands": 14, "rows": 8, "seed": 1, **(cfg.get("minhash") or {})}
    keep = cfg.get("keep", "smallest_id")
    if keep not in KEEP_POLICIES:
        raise ValueError(f"dedup.keep must be one of {KEEP_POLICIES}, got {keep!r}")
    if minhash["enabled"]:
        MinHasher(minhash["ngram"], minhash["bands"], minhash["rows"], minhash["seed"])  # validates
    return {"exact": exact, "minhash": minhash, "keep": keep}


def hash_shard(job: tuple[str, dict]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Pass 1 for one shard: (ids, exact hashes (n,2) or None, band hashes (n,bands) or None)."""
    path, cfg = job
    exact_cfg, mh_cfg = cfg["exact"], cfg["minhash"]
    hasher = MinHasher(mh_cfg["ngram"], mh_cfg["bands"], mh_cfg["rows"], mh_cfg["seed"]) if mh_cfg["enabled"] else None
    ids, exact, bands = [], [], []
    for batch in iter_batches(path, columns=["id", "text"]):
        texts = batch.column("text").to_pylist()
        ids.extend(batch.column("id").to_pylist())
        if exact_cfg["enabled"]:
            exact.append(exact_hashes(texts, lowercase=exact_cfg["lowercase"], strip_punctuation=exact_cfg["strip_punctuation"]))
        if hasher is not None:
            bands.append(hasher.band_hashes(hasher.signatures([words(t) for t in texts])))
    n_bands = mh_cfg["bands"] if hasher is not None else 0
    return (
        np.array(ids, dtype=str),
        (np.concatenate(exact) if exact else np.zeros((0, 2), np.uint64)) if exact_cfg["enabled"] else None,
        (np.concatenate(bands) if bands else np.zeros((0, n_bands), np.uint64)) if hasher is not None else None,
    )


def _concat(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if parts[0] is None else np.concatenate(parts)


def shard_contexts(shard_hashes: list[tuple], names: list[str]) -> dict[str, dict]:
    """Pass 2: global decisions, split into each shard's small context (only its drops and cluster heads)."""
    ids = np.concatenate([h[0] for h in shard_hashes])
    decisions = decide(ids, _concat([h[1] for h in shard_hashes]), _concat([h[2] for h in shard_hashes]))
    contexts, start = {}, 0
    for name, hashes in zip(names, shard_hashes):
        stop = start + len(hashes[0])
        drops, heads = {}, {}
        for i in start + np.flatnonzero(decisions.cluster_size[start:stop] > 1):  # singletons need no entry
            size = int(decisions.cluster_size[i])
            if decisions.reason[i] is not None:
                drops[str(ids[i])] = (decisions.reason[i], str(ids[decisions.kept_index[i]]), size)
            elif size > 1:
                heads[str(ids[i])] = size
        contexts[name] = {"drops": drops, "heads": heads}
        start = stop
    return contexts


def apply_decisions(task: ShardTask) -> ShardResult:
    """Pass 3 for one shard: split its records into kept and removed by the global decisions."""
    if "drops" not in task.context:
        raise RuntimeError(f"{STAGE}/{task.shard}: no global decisions for this shard (pass 2 did not run)")
    table = read_shard(task.inputs[0])
    table = table.drop_columns([c for c in DUP_COLUMNS if c in table.column_names])  # recomputed here
    drops, heads = task.context["drops"], task.context["heads"]
    ids = table.column("id").to_pylist()
    dup_of = [drops[i][1] if i in drops else None for i in ids]
    cluster = [drops[i][1] if i in drops else (i if i in heads else None) for i in ids]
    table = table.append_column("dup_of", pa.array(dup_of, pa.string()))
    table = table.append_column("dup_cluster", pa.array(cluster, pa.string()))
    keep = pa.array([i not in drops for i in ids], pa.bool_())
    kept, gone = table.filter(keep), table.filter(pc.invert(keep))
    gone_ids = gone.column("id").to_pylist()
    reasons = [drops[i][0] for i in gone_ids]
    details = [json.dumps({"dup_of": drops[i][1], "cluster_size": drops[i][2]}, sort_keys=True) for i in gone_ids]

    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
    for reason in REASONS:
        stats.drop(reason, reasons.count(reason))
    stats.extra["clusters"] = float(sum(1 for i in ids if i in heads))
    return ShardResult(kept, removed_table(gone, reasons, details), stats)


def run(params: dict) -> dict:
    cfg = dedup_config(params)
    in_dir, out_dir = resolve(INPUT_DIR), resolve(OUTPUT_DIR)
    inputs = list_shards(in_dir)
    if not inputs:
        raise FileNotFoundError(f"{STAGE}: no shards in {in_dir}")
    # Any input can change any shard's decisions: every output shard fingerprints all inputs.
    fingerprints = {p.name: sha256_file(p) for p in inputs}
    phash = params_hash(cfg)
    executor_params = params.get("executor")
    tasks = [
        ShardTask(stage=STAGE, shard=p.name, inputs=[str(p)], out_dir=str(out_dir), params=cfg, params_hash=phash,
                  fingerprints=fingerprints)
        for p in inputs
    ]
    if all(fragment_is_complete(out_dir, load_fragment(out_dir, t.shard), fingerprints, phash) for t in tasks):
        log.info("%s: every shard complete, global pass skipped", STAGE)
    else:
        shard_hashes = get_executor(executor_params).map(hash_shard, [(str(p), cfg) for p in inputs])
        contexts = shard_contexts(shard_hashes, [p.name for p in inputs])
        for t in tasks:
            t.context = contexts[t.shard]
    manifest = run_shard_stage(STAGE, tasks, apply_decisions, executor_params=executor_params, known_reasons=REASONS)
    return summarize(out_dir, manifest)


def summarize(out_dir: Path, manifest: dict) -> dict:
    stats = [load_fragment(out_dir, shard)["stats"] for shard in sorted(manifest["shards"])]
    drops = {r: sum(s["drops"].get(r, 0) for s in stats) for r in REASONS}
    return {
        "stage": STAGE,
        "shards": len(stats),
        "records_in": sum(s["records_in"] for s in stats),
        "records_out": sum(s["records_out"] for s in stats),
        EXACT_DUP: drops[EXACT_DUP],
        NEAR_DUP: drops[NEAR_DUP],
        "clusters": int(sum(s["extra"].get("clusters", 0) for s in stats)),
    }
