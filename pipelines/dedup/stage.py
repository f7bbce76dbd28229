"""Dedup stage: data/filter -> data/dedup.

The keep pass (parallel, per input shard) reads ids and the keep-policy
columns; the driver ranks every record in keep order (pipelines.dedup.keep).
Pass 1 (parallel, per input shard, pipelines.dedup.pass1): hash every word
once and derive the exact key, the MinHash signature and the decontamination
n-grams; write the exact, URL and band keys (each with its record's rank) as
key files partitioned by hash range into the run's scratch store (a local
directory or S3: pipelines.dedup.spill); return benchmark-contamination flags.
Pass 2 (executor tasks, pipelines.dedup.clusters): bucket tasks per (key kind,
hash range), pair tasks that count and verify candidate pairs, then
connected-component rounds, giving the duplicate clusters; the driver turns
them into each shard's small context. Then, optionally, semantic dedup of the
survivors (pipelines.dedup.semantic, on the driver), which also writes the
embedding cache. Pass 3 (parallel, per shard, through the core runner): write
kept records with ``dup_of`` / ``dup_cluster`` / ``contamination`` columns and
dropped ones under removed/ with their reason. Every output shard depends on
every input shard (a duplicate may live anywhere), so each shard's
fingerprints cover all inputs. Phase timings (wall + CPU) go to the log,
never into outputs.

History (pipelines.dedup.history): every run writes the dedup index of the
records it kept; a refresh (the previous input plus new shards, same settings)
keeps the old shards' decisions and dedups only the new shards, within
themselves and against the index (the earlier record wins). Scope ``global``
dedups across sources; ``snapshot`` within each source (each crawl is one).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import section, workspace
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.manifest import load_manifest_if_any
from pipelines.core.shards import read_shard
from pipelines.core.stats import ShardStats
from pipelines.dedup import decontam, eval_sets, history, keep, semantic, spill
from pipelines.dedup.clusters import DUPLICATE_URL, EXACT_DUP, NEAR_DUP, check_unique_ids, decide, partitions
from pipelines.dedup.decontam import CONTAMINATED
from pipelines.dedup.minhash import MinHasher
from pipelines.dedup.pass1 import band_kind, hash_shard, keep_keys
from pipelines.dedup.semantic import SEMANTIC_DUP
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.verify import read_text_column

log = logging.getLogger(__name__)
STAGE = "dedup"
REASONS = [EXACT_DUP, DUPLICATE_URL, NEAR_DUP, SEMANTIC_DUP, CONTAMINATED]
DUP_COLUMNS = ("dup_of", "dup_cluster", "contamination")
SCOPES = ("global", "snapshot")
STAGED_SIGNATURES = "signatures/index.u32"  # the index's signatures, in the run's scratch


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
    scope = cfg.get("scope", "global")
    if scope not in SCOPES:
        raise ValueError(f"dedup.scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not isinstance(cfg.get("history", True), bool):
        raise ValueError(f"dedup.history must be true or false, got {cfg['history']!r}")
    chunk = cfg.get("merge_chunk", 1_000_000)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"dedup.merge_chunk must be a positive integer, got {chunk!r}")
    return {"exact": exact, "minhash": minhash, "keep": [f"{c} {'desc' if d else 'asc'}" for c, d in policy],
            "scope": scope, "history": cfg.get("history", True), "merge_chunk": chunk, "decontam": decontam.validate(cfg.get("decontam")),
            "semantic": semantic.validate(cfg.get("semantic"))}


def texts_at(inputs: list[str], offsets: np.ndarray, indices: np.ndarray) -> list[str]:
    """Texts of records by global index (sorted indices), re-read one shard at a time (text column only)."""
    out: list[str] = []
    bounds = list(offsets) + [np.iinfo(np.int64).max]
    for s, path in enumerate(inputs):
        mine = indices[(indices >= bounds[s]) & (indices < bounds[s + 1])]
        if len(mine):
            out += read_text_column(path).take(pa.array(mine - bounds[s])).to_pylist()
    return out


def global_decisions(run, cfg: dict, clock: PhaseClock) -> dict[str, dict]:
    """Passes 1 and 2: each new shard's small context (its drops, cluster heads and contamination flags); in a
    refresh the dedup index's entries take part too, ranked first, and are never dropped."""
    refresh: history.Refresh | None = run.notes.get("refresh")
    refs = [ref for ref in run.input_shards() if refresh is None or ref.name not in refresh.old]
    inputs, names = [ref.uri for ref in refs], [ref.name for ref in refs]
    dc = cfg["decontam"]
    with clock("decontam_index"):
        index = decontam_index(run)
    with clock("keep_rank"):
        ids, offsets, rank, sources = keep_rank(run, inputs, cfg["keep"])
        earlier = history.read_records(run.store, refresh)  # the index's entries, by hid
        earlier_ids = np.array(earlier.column("id").to_pylist(), dtype=str)
        check_unique_ids(np.concatenate([earlier_ids, ids]) if len(earlier_ids) else ids)
    n_hist, n_new, mh = len(earlier_ids), len(ids), cfg["minhash"]
    n = n_hist + n_new
    rank = rank + n_hist  # index entries rank first: the earlier record wins
    parts = partitions(n, cfg["merge_chunk"])
    store = run.scratch
    with clock("pass1_hash"):
        jobs = [{"path": p, "shard": s, "cfg": cfg, "store": store, "index": index, "bounds": spill.hash_bounds(parts),
                 "rank": rank[offsets[s]:offsets[s + 1]]} for s, p in enumerate(inputs)]
        shard_out = run.map(hash_shard, jobs)
    for o in shard_out:
        clock.add(o["phases"], prefix="pass1_worker_")
    layout = [o["offsets"] for o in shard_out]
    verify_index = None
    if refresh is not None:
        with clock("index_stage"):
            layout.append(stage_index(run, refresh, spill.hash_bounds(parts)))
        if SIGNATURE_KIND in refresh.index["files"]:
            verify_index = {"signatures": STAGED_SIGNATURES, "minhash": mh}
    decisions = decide(run.map, store, layout, n, parts, exact=cfg["exact"]["enabled"],
                       bands=mh["bands"] if mh["enabled"] else 0, url=cfg["exact"]["url"],
                       threshold=mh["verify_threshold"] if mh["enabled"] else None, clock=clock, index=verify_index)
    log.info("%s: %d records, %d candidate pairs, %d after verification, %d clusters (%d of the records: the dedup "
             "index's)", STAGE, n, decisions.candidate_pairs, decisions.verified_pairs, decisions.n_clusters, n_hist)
    with clock("finalize"):
        by_rank = np.empty(n_new, dtype=np.int64)
        by_rank[rank - n_hist] = np.arange(n_new)
        id_of_rank = np.concatenate([earlier_ids, ids[by_rank]]) if n_hist else ids[by_rank]
        added = earlier.column("added").to_pylist()
        sets = index.names if index is not None else []
        contexts = {name: {"drops": {}, "heads": {}, "flags": {}, "sets": sets} for name in names}
        excluded = []
        for s, o in enumerate(shard_out):
            rows, flags = o["contam"]
            ctx = contexts[names[s]]
            for i, f in zip((offsets[s] + rows).tolist(), flags):
                ctx["flags"][str(ids[i])] = [sets[j] for j in np.flatnonzero(f)]
                if dc["mode"] == "drop":
                    ctx["drops"][str(ids[i])] = (CONTAMINATED, None, 1, None)
                    excluded.append(i)
        mine = decisions.node >= n_hist  # index entries keep their earlier decisions
        node, kept = decisions.node[mine], decisions.kept[mine]
        member = by_rank[node - n_hist]
        shard_of = np.searchsorted(offsets, member, side="right") - 1
        for i, s, reason, head, size in zip(member.tolist(), shard_of.tolist(), decisions.reason[mine],
                                            kept.tolist(), decisions.size[mine].tolist()):
            ctx = contexts[names[s]]
            if reason is not None:
                ctx["drops"][str(ids[i])] = (reason, str(id_of_rank[head]), size, added[head] if head < n_hist else None)
            else:
                ctx["heads"][str(ids[i])] = size
        survivors = np.ones(n_new, bool)
        survivors[member[kept != node]] = False
        survivors[np.asarray(excluded, dtype=np.int64)] = False
    if cfg["semantic"]["enabled"]:
        with clock("semantic"):
            sem_of = semantic_pass(run, inputs, offsets, ids, rank, np.flatnonzero(survivors), cfg["semantic"])
        add_semantic(contexts, names, offsets, ids, sem_of)
        survivors[sem_of >= 0] = False
    elif cfg["history"]:
        with clock("index_write"):
            run.notes["index"] = write_index(run, layout, earlier, ids, sources, offsets, rank, survivors)
    run.drop_scratch()  # key, shingle and edge files: not needed past the components and the index
    return contexts


SIGNATURE_KIND = history.SIGNATURES


def key_kinds(cfg: dict) -> list[str]:
    """The key kinds a run writes (and its index holds)."""
    kinds = (["exact"] if cfg["exact"]["enabled"] else []) + (["url"] if cfg["exact"]["url"] else [])
    return kinds + ([band_kind(b) for b in range(cfg["minhash"]["bands"])] if cfg["minhash"]["enabled"] else [])


def stage_index(run, refresh: history.Refresh, bounds: np.ndarray) -> dict[str, np.ndarray]:
    """The index's key files into scratch as the last "shard" of the layout; its signatures beside them."""
    shard = len(run.input_shards()) - len(refresh.old)  # after the new shards
    jobs = [{"store": run.store, "scratch": run.scratch, "kind": kind, "entry": refresh.index["files"][f"{kind}.bin"],
             "rel": spill.key_rel(shard, kind), "bounds": bounds} for kind in key_kinds(run.cfg)]
    layout = {r["kind"]: r["offsets"] for r in run.map(history.stage_history, jobs)}
    if SIGNATURE_KIND in refresh.index["files"]:
        history.stage_signatures({"store": run.store, "scratch": run.scratch, "rel": STAGED_SIGNATURES,
                                  "entry": refresh.index["files"][SIGNATURE_KIND]})
    return layout


def write_index(run, layout: list[dict], earlier, ids: np.ndarray, sources: list, offsets: np.ndarray,
                rank: np.ndarray, survivors: np.ndarray) -> dict:
    """The dedup index of this run's output: the earlier entries plus the new records kept, one file per key
    kind (executor tasks), the signatures and the records table."""
    n_hist, n_new = earlier.num_rows, len(ids)
    kept = np.flatnonzero(survivors)
    kept = kept[np.argsort(rank[kept], kind="stable")]  # new entries in keep order
    hid_of_rank = np.full(n_hist + n_new, -1, dtype=np.int64)
    hid_of_rank[:n_hist] = np.arange(n_hist)
    hid_of_rank[rank[kept]] = n_hist + np.arange(len(kept))
    spill.save_array(run.scratch, "index_hids.npy", hid_of_rank)
    gen = run.notes["index_generation"]
    where = f"{history.INDEX}/{gen[:16]}"
    files: dict[str, dict] = {}
    jobs = []
    for kind in key_kinds(run.cfg):
        parts = [(spill.key_rel(s, kind), 0, int(off[kind][-1])) for s, off in enumerate(layout) if off[kind][-1] > 0]
        jobs.append({"scratch": run.scratch, "store": run.store, "kind": kind, "parts": parts, "hid": "index_hids.npy",
                     "rel": f"{where}/{kind}.bin"})
    for r in run.map(history.write_index_keys, jobs):
        files[f"{r['kind']}.bin"] = r["entry"]
    mh = run.cfg["minhash"]
    if mh["enabled"] and mh["verify_threshold"] is not None:
        shard_of = np.searchsorted(offsets, kept, side="right") - 1
        new = [(spill.signature_rel(s), kept[shard_of == s] - offsets[s], n_hist + np.flatnonzero(shard_of == s))
               for s in range(len(offsets) - 1)]
        refresh = run.notes.get("refresh")
        job = {"scratch": run.scratch, "store": run.store, "num_perm": mh["bands"] * mh["rows"],
               "n_total": n_hist + len(kept), "history": STAGED_SIGNATURES if refresh and n_hist else None,
               "new": new, "rel": f"{where}/{SIGNATURE_KIND}"}
        files[SIGNATURE_KIND] = run.map(history.write_index_signatures, [job])[0]["entry"]
    table = pa.concat_tables([earlier, pa.table({
        "id": pa.array(ids[kept].tolist(), pa.string()),
        "source": pa.array([sources[i] for i in kept.tolist()], pa.string()),
        "added": pa.array([gen] * len(kept), pa.string())})])
    files[history.RECORDS] = history.write_records(run.store, f"{where}/{history.RECORDS}", table)
    records = n_hist + len(kept)
    log.info("%s: dedup index: %d records (%d added)", STAGE, records, len(kept))
    return {"key": history.index_key(run), "generation": gen, "records": records, "files": dict(sorted(files.items())),
            "fingerprint": history.index_fingerprint(files, records)}


def decontam_index(run) -> decontam.ContaminationIndex | None:
    """The run's contamination index (built once: pass 1 matches with it, the manifest reports its coverage)."""
    if not run.cfg["decontam"]["enabled"]:
        return None
    if "decontam_index" not in run.notes:
        run.notes["decontam_index"] = decontam.build_index(run.cfg["decontam"], workspace())
    return run.notes["decontam_index"]


def decontam_report(index: decontam.ContaminationIndex, cfg: dict) -> dict:
    """What the manifest records of decontamination: per benchmark, its file (path as configured, sha256) and
    coverage (items; checked by n-gram, checked whole; too short to check)."""
    return {"ngram": cfg["ngram"], "min_words": cfg["min_words"], "mode": cfg["mode"],
            "sets": {name: {"path": cfg["sets"][name]["path"], "sha256": index.sha256[name], **index.coverage[name]}
                     for name in index.names}}


def keep_rank(run, inputs: list[str], policy) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """(ids, shard offsets (n_shards + 1), keep rank, sources) of every record, in global index order."""
    shard_keys = run.map(keep_keys, [(p, policy) for p in inputs])
    ids = np.concatenate([k[0] for k in shard_keys]) if shard_keys else np.zeros(0, str)
    offsets = np.r_[0, np.cumsum([len(k[0]) for k in shard_keys])].astype(np.int64)
    sources = [s for k in shard_keys for s in k[2]]
    values = {}
    for c in keep.value_columns(keep.parse_keep(policy)):  # a shard without the column: missing values (rank last)
        if any(c in k[1] for k in shard_keys):
            values[c] = np.concatenate([k[1].get(c, np.full(len(k[0]), np.nan)) for k in shard_keys])
    return ids, offsets, keep.global_rank(ids, values, keep.parse_keep(policy)), sources


def add_semantic(contexts: dict, names: list[str], offsets: np.ndarray, ids: np.ndarray, sem_of: np.ndarray) -> None:
    """Semantic duplicates into the shards' contexts (dropped, naming their kept record, whose cluster grows)."""
    if not (sem_of >= 0).any():
        return
    group = np.bincount(sem_of[sem_of >= 0], minlength=len(ids)) + 1  # a kept record and its semantic dups
    shard_of = np.searchsorted(offsets, np.arange(len(ids)), side="right") - 1
    for i in np.flatnonzero(sem_of >= 0):
        head = int(sem_of[i])
        contexts[names[shard_of[i]]]["drops"][str(ids[i])] = (SEMANTIC_DUP, str(ids[head]), int(group[head]), None)
        heads = contexts[names[shard_of[head]]]["heads"]
        heads[str(ids[head])] = max(heads.get(str(ids[head]), 1), int(group[head]))


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
    details = [json.dumps(_detail(drops[i], flags.get(i)), sort_keys=True) for i in gone_ids]

    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
    for reason in REASONS:
        stats.drop(reason, reasons.count(reason))
    stats.extra["clusters"] = float(sum(1 for i in ids if i in heads))
    for name in task.context["sets"]:  # flagged records per benchmark (dropped or not, by mode)
        stats.extra[f"{CONTAMINATED}__{name}"] = float(sum(1 for i in ids if name in flags.get(i, ())))
    return ShardResult(kept, removed_table(gone, reasons, details), stats)


def _detail(drop: tuple, flags) -> dict:
    reason, head, size, run_key = drop
    if reason == CONTAMINATED:
        return {"benchmarks": flags}
    # dup_of_index: the dedup index generation that holds dup_of, i.e. the earlier data version it was kept in
    # (its dedup manifest's index.generation; lineage.json names the version)
    return {"dup_of": head, "cluster_size": size, **({"dup_of_index": run_key} if run_key else {})}


class DedupStage(DataStage):
    name = STAGE
    input = "filter"
    drop_reasons = tuple(REASONS)

    def config(self, params: dict) -> dict:
        return dedup_config(params)

    def shard_settings(self, cfg: dict) -> dict:
        # merge_chunk only sizes the global pass's tasks: the decisions, and so every shard, do not depend on it
        return {k: v for k, v in cfg.items() if k != "merge_chunk"}

    def external_inputs(self, run) -> dict[str, str]:
        # The eval sets decide drops too: each file's sha256, wherever it lives (storage.input_uri).
        dc = run.cfg["decontam"]
        return {n: eval_sets.file_sha256(s, workspace(), n) for n, s in dc["sets"].items()} if dc["enabled"] else {}

    def plan(self, run) -> list[ShardTask]:
        # Any input can change any shard's decisions: every output shard fingerprints all inputs. In a refresh
        # the old shards keep the fingerprints they were decided with (so they are complete), and the new ones
        # fingerprint the new shards and the index they were deduplicated against.
        refs = run.input_shards()
        refresh = run.notes["refresh"] = history.find_refresh(run, refs)
        if refresh is None:
            everything = {ref.name: ref.fingerprint for ref in refs}
            return [ShardTask(STAGE, ref.name, [ref.uri], everything) for ref in refs]
        new = {ref.name: ref.fingerprint for ref in refs if ref.name not in refresh.old}
        new[history.INDEX_INPUT] = refresh.index["fingerprint"]
        log.info("%s: refresh: %d new shards deduplicated against the dedup index (%d records); %d shards keep "
                 "their decisions", STAGE, len(new) - 1, refresh.n, len(refresh.old))
        return [ShardTask(STAGE, ref.name, [ref.uri], refresh.old.get(ref.name, new)) for ref in refs]

    def global_inputs(self, run, tasks: list[ShardTask]) -> dict:
        return {"eval_files": self.external_inputs(run)}

    def needs_prepare(self, run) -> bool:
        # the embedding cache and the dedup index are written by the global pass
        return run.cfg["semantic"]["enabled"] or run.cfg["history"]

    def prepare(self, run, tasks: list[ShardTask]) -> list[ShardTask]:
        clock = PhaseClock()
        with clock("imports"):
            # pyarrow imports pandas lazily at its first conversion (~1 s of CPU); doing it once here, before any
            # worker forks, keeps it out of the timed phases and out of every worker.
            import pandas  # noqa: F401
        refresh = run.notes.get("refresh")
        if refresh is not None:
            damaged = [t.shard for t in tasks if t.shard in refresh.old and not run.complete.get(t.rel)]
            if damaged:
                raise RuntimeError(f"{STAGE}: shard(s) {damaged[:3]} of the previous output are missing or damaged, and "
                                   f"a refresh keeps their decisions: delete {run.out_dir} to rebuild it in full")
        gen = run.notes["index_generation"] = history.generation(run, tasks)
        previous = ((load_manifest_if_any(run.out_dir) or {}).get("index") or {}).get("files") or {}
        history.remove_other_indexes(run, keep={gen[:16], *(history.index_dir(e) for e in previous.values())})
        contexts = global_decisions(run, run.cfg, clock)
        for t in tasks:
            if t.shard in contexts:
                t.context = contexts[t.shard]
        log.info("%s: phase timings %s", STAGE, json.dumps(clock.rounded()))
        return tasks

    def process(self, task: ShardTask) -> ShardResult:
        return apply_decisions(task)

    def finish(self, run, fragments: dict[str, list[dict]]) -> dict:
        index = decontam_index(run)
        out = {"decontam": decontam_report(index, run.cfg["decontam"])} if index is not None else {}
        if "index" in run.notes:
            out["index"] = run.notes["index"]
            # The previous generation goes now (a crash before the manifest is written costs a full rebuild).
            history.remove_other_indexes(run, keep={run.notes["index_generation"][:16]})
        if run.notes.get("refresh") is not None:
            out["refresh"] = {"parent_index": run.notes["refresh"].index["fingerprint"],
                              "kept_shards": len(run.notes["refresh"].old)}
        return out

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
            **({"decontam": manifest["decontam"]} if "decontam" in manifest else {}),
        }
