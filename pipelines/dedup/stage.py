"""Dedup stage: data/filter -> data/dedup.

Pass 1 (parallel, per input shard): read id, text (and the keep-policy
columns, and url when URL dedup is on); hash every word once (vectorised,
pipelines.dedup.minhash.text_word_hashes) and derive from those the exact
key, the MinHash signature and the decontamination n-grams; write each LSH
band's, the exact hashes' and the URL hashes' (hash, index) pairs as sorted
key files (pipelines.dedup.spill) and return only ids, keep values and
benchmark-contamination flags. Pass 2 (global, in this process): merge the
key files band by band into candidate pairs -> duplicate clusters
(pipelines.dedup.clusters), optionally verified by true Jaccard; then,
optionally, semantic dedup of the survivors (pipelines.dedup.semantic), which
also writes the embedding cache. Pass 3 (parallel, per shard, through the
core runner): write kept records with ``dup_of`` / ``dup_cluster`` /
``contamination`` columns and dropped ones under removed/ with their reason.
Every output shard depends on every input shard (a duplicate may live
anywhere), so each shard's fingerprints cover all inputs. Phase timings
(wall + CPU) go to the log, never into outputs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.hashing import sha256_file
from pipelines.core.shards import iter_batches, read_schema, read_shard
from pipelines.core.stats import ShardStats
from pipelines.dedup import decontam, keep, semantic, spill
from pipelines.dedup.clusters import DUPLICATE_URL, EXACT_DUP, NEAR_DUP, decide
from pipelines.dedup.decontam import CONTAMINATED
from pipelines.dedup.exact import exact_hashes
from pipelines.dedup.minhash import MinHasher, text_word_hashes, word_sequence_digests
from pipelines.dedup.semantic import SEMANTIC_DUP
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.urls import url_keys
from pipelines.dedup.verify import jaccard_verifier, read_text_column

log = logging.getLogger(__name__)
STAGE = "dedup"
REASONS = [EXACT_DUP, DUPLICATE_URL, NEAR_DUP, SEMANTIC_DUP, CONTAMINATED]
DUP_COLUMNS = ("dup_of", "dup_cluster", "contamination")


def dedup_config(params: dict) -> dict:
    """The validated ``dedup`` section with defaults filled in (all of it decides what is dropped)."""
    cfg = section(params, STAGE)
    exact = {"enabled": True, "lowercase": True, "strip_punctuation": True, "url": False, **(cfg.get("exact") or {})}
    if not isinstance(exact["url"], bool):
        raise ValueError(f"dedup.exact.url must be true or false, got {exact['url']!r}")
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
            "merge_chunk": chunk, "decontam": decontam.validate(cfg.get("decontam")),
            "semantic": semantic.validate(cfg.get("semantic"))}


def hash_shard(job: tuple) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict]:
    """Pass 1 for one shard: write its sorted key files; return (ids, keep-column values, contamination (n, sets), timings)."""
    path, shard, cfg, work, index = job
    clock = PhaseClock()
    exact_cfg, mh_cfg = cfg["exact"], cfg["minhash"]
    hasher = MinHasher(mh_cfg["ngram"], mh_cfg["bands"], mh_cfg["rows"], mh_cfg["seed"]) if mh_cfg["enabled"] else None
    present = set(pq_columns(path))
    value_cols = [c for c in keep.value_columns(keep.parse_keep(cfg["keep"])) if c in present]
    use_url = exact_cfg["url"]
    if use_url and "url" not in present:
        raise ValueError(f"dedup.exact.url is on but {path} has no url column")
    # With the default exact settings the exact key is the word sequence MinHash reads: hash words once for all.
    shared = exact_cfg["lowercase"] and exact_cfg["strip_punctuation"]
    need_words = hasher is not None or index is not None or (exact_cfg["enabled"] and shared)
    ids, exact, bands, contam, url_rows, url_hashes = [], [], [], [], [], []
    values: dict[str, list] = {c: [] for c in value_cols}
    # Jaccard verification reads the shingles back from scratch files instead of re-reading the texts.
    verifying = hasher is not None and mh_cfg["verify_threshold"] is not None
    shingle_out = spill.ShingleWriter(Path(work), shard) if verifying else None
    batches = iter_batches(path, columns=["id", "text", *value_cols, *(["url"] if use_url else [])])
    while True:
        with clock("read"):
            batch = next(batches, None)
            if batch is None:
                break
            texts = batch.column("text").to_pylist()
            if use_url:
                urls = batch.column("url").to_pylist()
        for c in value_cols:
            try:
                values[c].append(batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64))
            except (TypeError, ValueError) as e:
                raise ValueError(f"dedup.keep: column {c!r} of {path} is not numeric ({e})") from None
        if use_url:
            with clock("url"):
                rows, keys = url_keys(urls)
                url_rows.append(rows + len(ids))
                url_hashes.append(keys)
        ids.extend(batch.column("id").to_pylist())
        if need_words:
            with clock("words"):
                word_hashes, lengths = text_word_hashes(texts)
        if exact_cfg["enabled"]:
            with clock("exact"):
                exact.append(word_sequence_digests(word_hashes, lengths) if shared else exact_hashes(
                    texts, lowercase=exact_cfg["lowercase"], strip_punctuation=exact_cfg["strip_punctuation"]))
        if hasher is not None:
            with clock("minhash"):
                shingles, counts = hasher.shingles_of_words(word_hashes, lengths, texts)
                bands.append(hasher.band_hashes(hasher.signatures_of_shingles(shingles, counts)))
            if shingle_out is not None:
                with clock("spill"):
                    shingle_out.add(shingles, counts)
        if index is not None:
            with clock("decontam"):
                contam.append(index.match_words(word_hashes, lengths, texts))
    n_bands = mh_cfg["bands"] if hasher is not None else 0
    with clock("spill"):
        if shingle_out is not None:
            shingle_out.close(Path(work), shard)
        spill.write_shard_keys(
            Path(work), shard,
            (np.concatenate(exact) if exact else np.zeros((0, 2), np.uint64)) if exact_cfg["enabled"] else None,
            (np.concatenate(bands) if bands else np.zeros((0, n_bands), np.uint64)) if hasher is not None else None,
            url=(np.concatenate(url_rows), np.concatenate(url_hashes)) if use_url and url_rows else None,
        )
    n_sets = len(index.names) if index is not None else 0
    return (np.array(ids, dtype=str), {c: np.concatenate(v) if v else np.zeros(0) for c, v in values.items()},
            np.concatenate(contam) if contam else np.zeros((len(ids), n_sets), bool), clock.phases)


def texts_at(inputs: list[str], offsets: np.ndarray, indices: np.ndarray) -> list[str]:
    """Texts of records by global index (sorted indices), re-read one shard at a time (text column only)."""
    out: list[str] = []
    bounds = list(offsets) + [np.iinfo(np.int64).max]
    for s, path in enumerate(inputs):
        mine = indices[(indices >= bounds[s]) & (indices < bounds[s + 1])]
        if len(mine):
            out += read_text_column(path).take(pa.array(mine - bounds[s])).to_pylist()
    return out


def pq_columns(path: str) -> list[str]:
    return read_schema(path).names


def global_decisions(run, cfg: dict, clock: PhaseClock) -> dict[str, dict]:
    """Passes 1 and 2: each shard's small context (its drops, cluster heads and contamination flags)."""
    inputs = [ref.uri for ref in run.input_shards()]
    names = [ref.name for ref in run.input_shards()]
    dc = cfg["decontam"]
    with clock("decontam_index"):
        index = decontam.build_index(dc, resolve) if dc["enabled"] else None
    work = run.scratch.local_root()
    with clock("pass1_hash"):
        shard_out = run.map(hash_shard, [(p, s, cfg, str(work), index) for s, p in enumerate(inputs)])
    for o in shard_out:
        clock.add(o[3], prefix="pass1_worker_")
    with clock("keep_rank"):
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
        check = jaccard_verifier(work, offsets, float(mh["verify_threshold"]))

        def verify(src, dst):
            with clock("verify"):
                return check(src, dst)

    with clock("merge_cluster"):
        decisions = decide(ids, rank, work, offsets, len(inputs), exact=cfg["exact"]["enabled"],
                           bands=mh["bands"] if mh["enabled"] else 0, excluded=excluded, chunk=cfg["merge_chunk"],
                           verify=verify, url=cfg["exact"]["url"])
    if "verify" in clock.phases:  # merge_cluster's numbers include verification: report them apart
        for k in ("wall_s", "cpu_s"):
            clock.phases["merge_cluster"][k] -= clock.phases["verify"][k]
    run.drop_scratch()  # key and shingle files: not needed past the merge
    log.info("%s: %d records, %d candidate pairs, %d after verification, %d clusters", STAGE, len(ids),
             decisions.candidate_pairs, decisions.verified_pairs, decisions.n_clusters)
    sem_of = np.full(len(ids), -1, dtype=np.int64)
    if cfg["semantic"]["enabled"]:
        with clock("semantic"):
            survivors = (decisions.kept_index == np.arange(len(ids)))
            if excluded is not None:
                survivors &= ~excluded
            sem_of = semantic_pass(run, inputs, offsets, ids, rank, np.flatnonzero(survivors), cfg["semantic"])
    sets = index.names if index is not None else []
    contexts = {}
    for s in range(len(inputs)):
        start, stop = int(offsets[s]), int(offsets[s] + sizes[s])
        drops, heads, flags = {}, {}, {}
        for i in start + np.flatnonzero(contam[start:stop].any(axis=1)):
            flags[str(ids[i])] = [sets[j] for j in np.flatnonzero(contam[i])]
            if excluded is not None:
                drops[str(ids[i])] = (CONTAMINATED, None, 1)
        for i in start + np.flatnonzero(decisions.cluster_size[start:stop] > 1):  # singletons need no entry
            size = int(decisions.cluster_size[i])
            if decisions.reason[i] is not None:
                drops[str(ids[i])] = (decisions.reason[i], str(ids[decisions.kept_index[i]]), size)
            else:
                heads[str(ids[i])] = size
        contexts[names[s]] = {"drops": drops, "heads": heads, "flags": flags, "sets": sets}
    if (sem_of >= 0).any():
        group = np.bincount(sem_of[sem_of >= 0], minlength=len(ids)) + 1  # a kept record and its semantic dups
        shard_of = np.searchsorted(offsets, np.arange(len(ids)), side="right") - 1
        for i in np.flatnonzero(sem_of >= 0):
            head = int(sem_of[i])
            contexts[names[shard_of[i]]]["drops"][str(ids[i])] = (SEMANTIC_DUP, str(ids[head]), int(group[head]))
            heads = contexts[names[shard_of[head]]]["heads"]
            heads[str(ids[head])] = max(heads.get(str(ids[head]), 1), int(group[head]))
    return contexts


def semantic_pass(run, inputs: list[str], offsets: np.ndarray, ids: np.ndarray, rank: np.ndarray, candidates: np.ndarray,
                  cfg: dict) -> np.ndarray:
    """Semantic dedup of the records exact + fuzzy dedup kept; writes the kept records' embeddings.

    Returns sem_of: (n,) global index of the record each semantic duplicate duplicates, -1 elsewhere.
    Candidates are embedded in keep-rank order, so k-means (and so the result) does not depend on sharding.
    """
    texts = dict(zip(candidates.tolist(), texts_at(inputs, offsets, candidates)))
    order = candidates[np.argsort(rank[candidates], kind="stable")]
    emb = semantic.embed([texts[i] for i in order.tolist()], batch_size=cfg["batch_size"], max_tokens=cfg["max_tokens"])
    local = semantic.semantic_duplicates(emb, rank[order], n_clusters=cfg["clusters"], threshold=cfg["threshold"],
                                         seed=cfg["seed"])
    sem_of = np.full(len(ids), -1, dtype=np.int64)
    dup = local >= 0
    sem_of[order[dup]] = order[local[dup]]
    run.write_artifact(semantic.EMBEDDINGS_FILE, lambda tmp: semantic.write_embeddings(
        tmp, [str(ids[i]) for i in order[~dup]], emb[~dup]))
    log.info("%s: semantic dedup of %d records dropped %d (threshold %.3f)", STAGE, len(order), int(dup.sum()),
             cfg["threshold"])
    return sem_of


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
    table = table.append_column("dup_of", pa.array(dup_of, pa.string()))  # semantic dups name their kept record too
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


class DedupStage(DataStage):
    name = STAGE
    input = "filter"
    drop_reasons = tuple(REASONS)

    def config(self, params: dict) -> dict:
        return dedup_config(params)

    def external_inputs(self, run) -> dict[str, str]:
        # The eval sets decide drops too.
        dc = run.cfg["decontam"]
        return {n: sha256_file(resolve(s["path"])) for n, s in dc["sets"].items()} if dc["enabled"] else {}

    def plan(self, run) -> list[ShardTask]:
        # Any input can change any shard's decisions: every output shard fingerprints all inputs.
        refs = run.input_shards()
        everything = {ref.name: ref.fingerprint for ref in refs}
        return [ShardTask(STAGE, ref.name, [ref.uri], everything) for ref in refs]

    def global_inputs(self, run, tasks: list[ShardTask]) -> dict:
        return {"eval_files": self.external_inputs(run)}

    def needs_prepare(self, run) -> bool:
        return run.cfg["semantic"]["enabled"]  # the embedding cache is written by the global pass

    def prepare(self, run, tasks: list[ShardTask]) -> list[ShardTask]:
        clock = PhaseClock()
        with clock("imports"):
            # pyarrow imports pandas lazily at its first conversion (~1 s of CPU); doing it once here, before any
            # worker forks, keeps it out of the timed phases and out of every worker.
            import pandas  # noqa: F401
        contexts = global_decisions(run, run.cfg, clock)
        for t in tasks:
            t.context = contexts[t.shard]
        log.info("%s: phase timings %s", STAGE, json.dumps(clock.rounded()))
        return tasks

    def process(self, task: ShardTask) -> ShardResult:
        return apply_decisions(task)

    def summarize(self, run, manifest: dict, stats: list[ShardStats]) -> dict:
        drops = {r: sum(s.drops.get(r, 0) for s in stats) for r in REASONS}
        return {
            "stage": STAGE,
            "shards": len(stats),
            "records_in": sum(s.records_in for s in stats),
            "records_out": sum(s.records_out for s in stats),
            EXACT_DUP: drops[EXACT_DUP],
            NEAR_DUP: drops[NEAR_DUP],
            DUPLICATE_URL: drops[DUPLICATE_URL],
            SEMANTIC_DUP: drops[SEMANTIC_DUP],
            CONTAMINATED: drops[CONTAMINATED],
            "clusters": int(sum(s.extra.get("clusters", 0) for s in stats)),
            **{k: int(sum(s.extra.get(k, 0) for s in stats))
               for k in sorted({k for s in stats for k in s.extra if k.startswith(CONTAMINATED + "__")})},
        }
