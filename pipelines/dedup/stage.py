"""Dedup stage: data/filter -> data/dedup.

Pass 1 (parallel, per input shard): read id, text (and the keep-policy
columns); write each LSH band's and the exact hashes' (hash, index) pairs as
sorted key files (pipelines.dedup.spill) and return only ids, keep values and
benchmark-contamination flags. Pass 2 (global, in this process): merge the
key files band by band into candidate pairs -> duplicate clusters
(pipelines.dedup.clusters), optionally verified by true Jaccard. Pass 3
(parallel, per shard, through the core runner): write kept records with
``dup_of`` / ``dup_cluster`` / ``contamination`` columns and dropped ones
under removed/ with their reason. Every output shard depends on every input
shard (a duplicate may live anywhere), so each shard's fingerprints cover all
inputs.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.executor import get_executor
from pipelines.core.hashing import params_hash, sha256_file
from pipelines.core.manifest import fragment_is_complete, load_fragment
from pipelines.core.shards import iter_batches, read_shard, require_shards
from pipelines.core.stage import ShardResult, ShardTask, removed_table, run_shard_stage
from pipelines.core.stats import ShardStats
from pipelines.dedup import decontam, keep, spill
from pipelines.dedup.clusters import EXACT_DUP, NEAR_DUP, decide
from pipelines.dedup.decontam import CONTAMINATED
from pipelines.dedup.exact import exact_hashes, hash_normalized
from pipelines.dedup.minhash import MinHasher
from pipelines.dedup.normalize import normalize_text, words
from pipelines.dedup.verify import jaccard_verifier

log = logging.getLogger(__name__)
STAGE = "dedup"
INPUT_DIR = "data/filter"
OUTPUT_DIR = "data/dedup"
REASONS = [EXACT_DUP, NEAR_DUP, CONTAMINATED]
DUP_COLUMNS = ("dup_of", "dup_cluster", "contamination")


def dedup_config(params: dict) -> dict:
    """The validated ``dedup`` section with defaults filled in (all of it decides what is dropped)."""
    cfg = section(params, STAGE)
    exact = {"enabled": True, "lowercase": True, "strip_punctuation": True, **(cfg.get("exact") or {})}
    minhash = {"enabled": True, "ngram": 5, "bands": 14, "rows": 8, "seed": 1, "verify_threshold": None,
               **(cfg.get("minhash") or {})}
    policy = keep.parse_keep(cfg.get("keep", "smallest_id"))
    if minhash["enabled"]:
        MinHasher(minhash["ngram"], minhash["bands"], minhash["rows"], minhash["seed"])  # validates
    vt = minhash["verify_threshold"]
    if vt is not None and (isinstance(vt, bool) or not isinstance(vt, (int, float)) or not 0 < vt <= 1):
        raise ValueError(f"dedup.minhash.verify_threshold must be null or a number in (0, 1], got {vt!r}")
    chunk = cfg.get("merge_chunk", 1_000_000)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"dedup.merge_chunk must be a positive integer, got {chunk!r}")
    return {"exact": exact, "minhash": minhash, "keep": [f"{c} {'desc' if d else 'asc'}" for c, d in policy],
            "merge_chunk": chunk, "decontam": decontam.validate(cfg.get("decontam"))}


def hash_shard(job: tuple) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Pass 1 for one shard: write its sorted key files; return (ids, keep-column values, contamination (n, sets))."""
    path, shard, cfg, work, index = job
    exact_cfg, mh_cfg = cfg["exact"], cfg["minhash"]
    hasher = MinHasher(mh_cfg["ngram"], mh_cfg["bands"], mh_cfg["rows"], mh_cfg["seed"]) if mh_cfg["enabled"] else None
    present = set(pq_columns(path))
    value_cols = [c for c in keep.value_columns(keep.parse_keep(cfg["keep"])) if c in present]
    ids, exact, bands, contam = [], [], [], []
    values: dict[str, list] = {c: [] for c in value_cols}
    for batch in iter_batches(path, columns=["id", "text", *value_cols]):
        texts = batch.column("text").to_pylist()
        ids.extend(batch.column("id").to_pylist())
        for c in value_cols:
            try:
                values[c].append(batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64))
            except (TypeError, ValueError) as e:
                raise ValueError(f"dedup.keep: column {c!r} of {path} is not numeric ({e})") from None
        # MinHash words are the fully normalised text split: with the default exact settings, normalise once.
        shared = exact_cfg["lowercase"] and exact_cfg["strip_punctuation"]
        normalized = [normalize_text(t) for t in texts] if shared and (exact_cfg["enabled"] or hasher is not None) else None
        if exact_cfg["enabled"]:
            exact.append(hash_normalized(normalized) if shared else exact_hashes(
                texts, lowercase=exact_cfg["lowercase"], strip_punctuation=exact_cfg["strip_punctuation"]))
        if hasher is not None:
            docs = [t.split() for t in normalized] if shared else [words(t) for t in texts]
            bands.append(hasher.band_hashes(hasher.signatures(docs)))
        if index is not None:
            contam.append(index.match(texts))
    n_bands = mh_cfg["bands"] if hasher is not None else 0
    spill.write_shard_keys(
        Path(work), shard,
        (np.concatenate(exact) if exact else np.zeros((0, 2), np.uint64)) if exact_cfg["enabled"] else None,
        (np.concatenate(bands) if bands else np.zeros((0, n_bands), np.uint64)) if hasher is not None else None,
    )
    n_sets = len(index.names) if index is not None else 0
    return (np.array(ids, dtype=str), {c: np.concatenate(v) if v else np.zeros(0) for c, v in values.items()},
            np.concatenate(contam) if contam else np.zeros((len(ids), n_sets), bool))


def pq_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(path).names


def global_decisions(inputs: list[Path], cfg: dict, executor_params: dict | None) -> dict[str, dict]:
    """Passes 1 and 2: each shard's small context (its drops, cluster heads and contamination flags)."""
    dc = cfg["decontam"]
    index = decontam.build_index(dc, resolve) if dc["enabled"] else None
    parent = resolve(OUTPUT_DIR).parent
    for stale in parent.glob(".dedup-work-*"):  # left by a run killed in this phase: scratch only
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".dedup-work-", dir=parent))
    try:
        shard_out = get_executor(executor_params).map(
            hash_shard, [(str(p), s, cfg, str(work), index) for s, p in enumerate(inputs)])
        ids = np.concatenate([o[0] for o in shard_out])
        sizes = np.array([len(o[0]) for o in shard_out], dtype=np.int64)
        offsets = np.cumsum(sizes) - sizes
        policy = keep.parse_keep(cfg["keep"])
        values = {}
        for c in keep.value_columns(policy):  # a shard without the column: missing values (rank last)
            if any(c in o[1] for o in shard_out):
                values[c] = np.concatenate([o[1].get(c, np.full(len(o[0]), np.nan)) for o in shard_out])
        rank = keep.global_rank(ids, values, policy)
        contam = np.concatenate([o[2] for o in shard_out]) if index is not None else np.zeros((len(ids), 0), bool)
        excluded = contam.any(axis=1) if dc["mode"] == "drop" else None
        mh = cfg["minhash"]
        verify = None
        if mh["enabled"] and mh["verify_threshold"] is not None:
            verify = jaccard_verifier(inputs, offsets, MinHasher(mh["ngram"], mh["bands"], mh["rows"], mh["seed"]),
                                      float(mh["verify_threshold"]))
        decisions = decide(ids, rank, work, offsets, len(inputs), exact=cfg["exact"]["enabled"],
                           bands=mh["bands"] if mh["enabled"] else 0, excluded=excluded, chunk=cfg["merge_chunk"],
                           verify=verify)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: %d records, %d candidate pairs, %d after verification, %d clusters", STAGE, len(ids),
             decisions.candidate_pairs, decisions.verified_pairs, decisions.n_clusters)
    names = index.names if index is not None else []
    contexts = {}
    for s, p in enumerate(inputs):
        start, stop = int(offsets[s]), int(offsets[s] + sizes[s])
        drops, heads, flags = {}, {}, {}
        for i in start + np.flatnonzero(contam[start:stop].any(axis=1)):
            flags[str(ids[i])] = [names[j] for j in np.flatnonzero(contam[i])]
            if excluded is not None:
                drops[str(ids[i])] = (CONTAMINATED, None, 1)
        for i in start + np.flatnonzero(decisions.cluster_size[start:stop] > 1):  # singletons need no entry
            size = int(decisions.cluster_size[i])
            if decisions.reason[i] is not None:
                drops[str(ids[i])] = (decisions.reason[i], str(ids[decisions.kept_index[i]]), size)
            else:
                heads[str(ids[i])] = size
        contexts[p.name] = {"drops": drops, "heads": heads, "flags": flags, "sets": names}
    return contexts


def apply_decisions(task: ShardTask) -> ShardResult:
    """Pass 3 for one shard: split its records into kept and removed by the global decisions."""
    if "drops" not in task.context:
        raise RuntimeError(f"{STAGE}/{task.shard}: no global decisions for this shard (pass 2 did not run)")
    table = read_shard(task.inputs[0])
    table = table.drop_columns([c for c in DUP_COLUMNS if c in table.column_names])  # recomputed here
    drops, heads = task.context["drops"], task.context["heads"]
    ids = table.column("id").to_pylist()
    flags = task.context["flags"]
    dup_of = [drops[i][1] if i in drops else None for i in ids]
    cluster = [drops[i][1] if i in drops else (i if i in heads else None) for i in ids]
    table = table.append_column("dup_of", pa.array(dup_of, pa.string()))
    table = table.append_column("dup_cluster", pa.array(cluster, pa.string()))
    table = table.append_column("contamination", pa.array([",".join(flags[i]) if i in flags else None for i in ids], pa.string()))
    keep = pa.array([i not in drops for i in ids], pa.bool_())
    kept, gone = table.filter(keep), table.filter(pc.invert(keep))
    gone_ids = gone.column("id").to_pylist()
    reasons = [drops[i][0] for i in gone_ids]
    details = [json.dumps({"benchmarks": flags[i]} if drops[i][0] == CONTAMINATED
                          else {"dup_of": drops[i][1], "cluster_size": drops[i][2]}, sort_keys=True) for i in gone_ids]

    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
    for reason in REASONS:
        stats.drop(reason, reasons.count(reason))
    stats.extra["clusters"] = float(sum(1 for i in ids if i in heads))
    for name in task.context["sets"]:  # flagged records per benchmark (dropped or not, by mode)
        stats.extra[f"{CONTAMINATED}__{name}"] = float(sum(1 for i in ids if name in flags.get(i, ())))
    return ShardResult(kept, removed_table(gone, reasons, details), stats)


def run(params: dict) -> dict:
    cfg = dedup_config(params)
    in_dir, out_dir = resolve(INPUT_DIR), resolve(OUTPUT_DIR)
    inputs = require_shards(in_dir, "filter")
    # Any input can change any shard's decisions: every output shard fingerprints all inputs.
    fingerprints = {p.name: sha256_file(p) for p in inputs}
    # The eval sets decide drops too: their content is part of the params hash.
    eval_files = {n: sha256_file(resolve(s["path"])) for n, s in cfg["decontam"]["sets"].items()} if cfg["decontam"]["enabled"] else {}
    phash = params_hash({**cfg, "eval_files": eval_files})
    executor_params = params.get("executor")
    tasks = [
        ShardTask(stage=STAGE, shard=p.name, inputs=[str(p)], out_dir=str(out_dir), params=cfg, params_hash=phash,
                  fingerprints=fingerprints)
        for p in inputs
    ]
    if all(fragment_is_complete(out_dir, load_fragment(out_dir, t.shard), fingerprints, phash) for t in tasks):
        log.info("%s: every shard complete, global pass skipped", STAGE)
    else:
        contexts = global_decisions(inputs, cfg, executor_params)
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
        CONTAMINATED: drops[CONTAMINATED],
        "clusters": int(sum(s["extra"].get("clusters", 0) for s in stats)),
        **{k: int(sum(s["extra"].get(k, 0) for s in stats))
           for k in sorted({k for s in stats for k in s["extra"] if k.startswith(CONTAMINATED + "__")})},
    }
