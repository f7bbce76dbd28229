"""Dedup stage: data/filter -> data/dedup.

Every whole-corpus step is a map of executor tasks exchanging files through the run's scratch store; the
driver holds no per-record data, only file offsets.
Keep rank (pipelines.dedup.rank): a sample sort by keep key gives every record its rank (0 = kept first),
in key ranges that are the node ranges of the later steps.
Pass 1 (per input shard, pipelines.dedup.pass1): hash every word once and derive the exact key, the
MinHash signature and the decontamination n-grams; write the exact, URL and band keys (each with its
record's rank) as key files partitioned by hash range into scratch (a local directory or S3:
pipelines.dedup.spill), and the contamination flags.
Pass 2 (pipelines.dedup.clusters): bucket tasks per (key kind, hash range), pair tasks that count and verify
candidate pairs, then connected-component rounds, giving the duplicate clusters; finalize tasks
(pipelines.dedup.finalize) turn them into small per-shard decision files. Then, optionally, semantic dedup
of the survivors (pipelines.dedup.semantic, on the driver), which also writes the embedding cache. Pass 3
(per shard, through the core runner): write kept records with ``dup_of`` / ``dup_cluster`` /
``contamination`` columns and dropped ones under removed/ with their reason. Every output shard depends on
every input shard (a duplicate may live anywhere), so each shard's fingerprints cover all inputs. Phase
timings (wall + CPU) go to the log, never into outputs.

History (pipelines.dedup.history): every run writes the dedup index of the
records it kept; a refresh (the previous input plus new shards, same settings)
keeps the old shards' decisions and dedups only the new shards, within
themselves and against the index (the earlier record wins). Scope ``global``
dedups across sources; ``snapshot`` within each source (each crawl is one).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import section, workspace
from pipelines.core.contract import DataStage, ShardResult, ShardTask, removed_table
from pipelines.core.manifest import load_manifest_if_any
from pipelines.core.shards import read_shard
from pipelines.core.stats import ShardStats
from pipelines.dedup import cross_source, decontam, eval_sets, history, keep, rank, semantic, spill
from pipelines.dedup.clusters import DUPLICATE_URL, EXACT_DUP, NEAR_DUP, decide, partitions
from pipelines.dedup.decontam import CONTAMINATED
from pipelines.dedup.finalize import (CONTAMINATED_CODE, EXACT_COPY, NEAR, SEMANTIC_CODE, URL_COPY, answer_range,
                                      by_shard, decide_range, semantic_dtype, shard_decisions, survivor_dtype)
from pipelines.dedup.minhash import MinHasher
from pipelines.dedup.pass1 import band_kind, dropped_rel, hash_shard
from pipelines.dedup.semantic import SEMANTIC_DUP
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.verify import read_text_column

log = logging.getLogger(__name__)
STAGE = "dedup"
REASONS = [EXACT_DUP, DUPLICATE_URL, NEAR_DUP, SEMANTIC_DUP, CONTAMINATED]
DUP_COLUMNS = ("dup_of", "dup_cluster", "contamination")
SCOPES = ("global", "snapshot")
SCRATCH_DONE = ["keys", "shingles", "signatures", "pairs", "cc", "rank", "exact_nonheads.bits.npy"]


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


def global_decisions(run, cfg: dict, clock: PhaseClock) -> dict[str, dict]:
    """Passes 1 and 2 and the finalize maps: each new shard's context (where its decisions are in scratch). In a
    refresh the dedup index's entries take part too, ranked first, and are never dropped."""
    refresh: history.Refresh | None = run.notes.get("refresh")
    refs = [ref for ref in run.input_shards() if refresh is None or ref.name not in refresh.old]
    inputs, names = [ref.uri for ref in refs], [ref.name for ref in refs]
    n_hist, mh, store = (refresh.n if refresh is not None else 0), cfg["minhash"], run.scratch
    records = {"store": run.store, "records": history.segment_files(refresh.index, history.RECORDS),
               "ids": history.segment_files(refresh.index, history.IDS)} if n_hist else None
    with clock("decontam_index"):
        index = decontam_index(run)
    with clock("keep_rank"):
        ranking = rank.rank_records(run.map, store, inputs, cfg["keep"], first=n_hist, chunk=cfg["merge_chunk"],
                                    index_ids={**records, "n": n_hist} if records else None)
    n = n_hist + ranking.n
    parts = partitions(n, cfg["merge_chunk"])
    # Node ranges: the index's entries cut evenly, then this run's key ranges (each has its rank table).
    hist = np.r_[0, spill.node_bounds(n_hist, partitions(n_hist, cfg["merge_chunk"]))] if n_hist else np.zeros(0, np.int64)
    starts = np.r_[hist, ranking.bases[:-1]].astype(np.int64)
    bounds, first_new = starts[1:], len(hist)
    with clock("pass1_hash"):
        jobs = [{"path": p, "shard": s, "cfg": cfg, "store": store, "index": index, "bounds": spill.hash_bounds(parts),
                 "ranks": ranking.shard_ranks(s), "rows": ranking.rows[s], "node_bounds": bounds}
                for s, p in enumerate(inputs)]
        shard_out = run.map(hash_shard, jobs)
    for o in shard_out:
        clock.add(o["phases"], prefix="pass1_worker_")
    layout = [o["offsets"] for o in shard_out]
    verify_index = None
    if refresh is not None:
        with clock("index_stage"):
            layout.append(stage_index(run, refresh, layout, spill.hash_bounds(parts)))
        signatures = history.segment_files(refresh.index, SIGNATURE_KIND)
        if signatures:
            verify_index = {"store": run.store, "signatures": signatures, "minhash": mh}
    if cfg["scope"] == "snapshot" and cfg["exact"]["enabled"]:
        with clock("cross_source"):
            run.notes["cross_source"] = count_cross_source(run, layout, ranking, parts)
    decisions = decide(run.map, store, layout, n, parts, bounds, exact=cfg["exact"]["enabled"],
                       bands=mh["bands"] if mh["enabled"] else 0, url=cfg["exact"]["url"],
                       threshold=mh["verify_threshold"] if mh["enabled"] else None, clock=clock, index=verify_index)
    log.info("%s: %d records, %d candidate pairs, %d after verification, %d clusters of %d records (%d of the "
             "records: the dedup index's)", STAGE, n, decisions.candidate_pairs, decisions.verified_pairs,
             decisions.n_clusters, decisions.clustered, n_hist)
    with clock("finalize"):
        ends = np.r_[starts[1:], n]
        dropped = [(dropped_rel(s), o["contam"]["dropped"]) for s, o in enumerate(shard_out)]
        decide_jobs = [{"store": store, "lo": int(starts[q]), "hi": int(ends[q]), "table": ranking.tables[q - first_new],
                        "nodes": decisions.nodes[q], "dropped": spill.slices(dropped, q), "bounds": bounds,
                        "nonheads": {k: spill.slices(f, q) for k, f in decisions.nonheads.items()},
                        "shards": len(inputs), "out": f"final/q{q:05d}"} for q in range(first_new, len(starts))]
        decided = run.map(decide_range, decide_jobs)
        requests = [(j["out"] + ".req.bin", d["req"]) for j, d in zip(decide_jobs, decided)]
        answer_jobs = [{"store": store, "lo": int(starts[r]), "requests": spill.slices(requests, r),
                        "nodes": decisions.nodes[r], "table": ranking.tables[r - first_new] if r >= first_new else None,
                        "index": records if r < first_new else None, "shards": len(inputs),
                        "out": f"final/a{r:05d}.bin"} for r in range(len(starts))]
        answered = run.map(answer_range, answer_jobs)
        sets = index.names if index is not None else []
        contexts = {}
        for s, name in enumerate(names):
            contexts[name] = {
                "store": store, "shard": s, "sets": sets,
                "dec": spill.slices([(j["out"] + ".dec.bin", d["dec"]) for j, d in zip(decide_jobs, decided)], s),
                "ans": [(j["out"], int(a["ans"][s]), int(a["ans"][s + 1]), a["dtype"])
                        for j, a in zip(answer_jobs, answered) if a["ans"][s + 1] > a["ans"][s]]}
    survivors = [j["out"] + ".surv.npy" for j in decide_jobs]
    if cfg["semantic"]["enabled"]:
        with clock("semantic"):
            sem = semantic_pass(run, inputs, survivors, ranking.id_width, cfg["semantic"])
        for s, ctx in enumerate(contexts.values()):
            ctx["semantic"], ctx["semantic_dtype"] = spill.slices([sem["file"]], s), sem["dtype"]
    elif cfg["history"]:
        with clock("index_write"):
            run.notes["index"] = write_index(run, layout[:len(inputs)], ranking, n_hist, survivors, [
                (j["out"] + ".kept.npy", j["lo"], d["kept"]) for j, d in zip(decide_jobs, decided)])
    for rel in SCRATCH_DONE + key_kinds(cfg):  # pass 3 reads only final/ and contam/
        store.remove(rel)
    return contexts


SIGNATURE_KIND = history.SIGNATURES


def count_cross_source(run, layout: list[dict], ranking: rank.Ranking, parts: int) -> dict:
    """Scope ``snapshot``: how many of this version's records are exact copies of a better ranked record of
    another source (kept: pipelines.dedup.cross_source); a refresh adds its new crawl's to the previous count."""
    refresh, store = run.notes.get("refresh"), run.scratch
    shards = len(ranking.rows)
    files = [(spill.key_rel(s, cross_source.KIND), layout[s][cross_source.KIND]) for s in range(shards)]
    names = list(ranking.sources)
    if refresh is not None and refresh.n:
        rel = spill.key_rel(shards, cross_source.KIND)
        staged = run.map(cross_source.stage_index, [{
            "store": run.store, "entries": history.segment_files(refresh.index, "exact.bin"), "scratch": store,
            "rel": rel, "records": history.segment_files(refresh.index, history.RECORDS),
            "bounds": spill.hash_bounds(parts)}])[0]
        files.append((rel, staged["offsets"]))
        names += staged["sources"]
    found = cross_source.count(run.map, store, files, parts, refresh.n if refresh is not None else 0, names)
    before = ((load_manifest_if_any(run.out_dir) or {}).get("cross_source") or {}) if refresh is not None else {}
    by_source = dict(before.get("by_source") or {})
    for source, k in found["by_source"].items():
        by_source[source] = by_source.get(source, 0) + k
    log.info("%s: %d records are exact copies of a record from another source (kept: scope snapshot)", STAGE,
             found["records"])
    return {"scope": "snapshot", "match": "exact", "records": int(before.get("records", 0)) + found["records"],
            "by_source": dict(sorted(by_source.items()))}


def key_kinds(cfg: dict) -> list[str]:
    """The key kinds a run writes (and its index holds)."""
    kinds = (["exact"] if cfg["exact"]["enabled"] else []) + (["url"] if cfg["exact"]["url"] else [])
    return kinds + ([band_kind(b) for b in range(cfg["minhash"]["bands"])] if cfg["minhash"]["enabled"] else [])


def stage_index(run, refresh: history.Refresh, layout: list[dict], bounds: np.ndarray) -> dict[str, np.ndarray]:
    """The index entries that share a key with a new record (``layout``: the new shards' key files), per key
    kind, into scratch as the last "shard" of the layout."""
    shard = len(layout)  # after the new shards
    jobs = [{"store": run.store, "scratch": run.scratch, "kind": kind,
             "entries": history.segment_files(refresh.index, f"{kind}.bin"), "rel": spill.key_rel(shard, kind),
             "probe": [(spill.key_rel(s, kind), off[kind]) for s, off in enumerate(layout)], "bounds": bounds}
            for kind in key_kinds(run.cfg)]
    layout = {r["kind"]: r["offsets"] for r in run.map(history.stage_history, jobs)}
    log.info("%s: index probe: of %d index entries, staged by key kind %s", STAGE, refresh.n,
             json.dumps({k: int(off[-1]) for k, off in layout.items()}))
    return layout


def write_index(run, layout: list[dict], ranking: rank.Ranking, n_hist: int, survivors: list[str],
                kept: list[tuple[str, int, int]]) -> dict:
    """The dedup index of this run's output: the earlier segments plus one of the new records kept (in keep
    order): one file per key kind, the signatures and the records table, written by executor tasks. ``layout``:
    the new shards' key files; ``survivors``: per node range of this run, its kept records; ``kept``: (their
    positions file, the range's first rank, count)."""
    hid_base = n_hist + np.r_[0, np.cumsum([c for _, _, c in kept])].astype(np.int64)
    hids = [(rel, lo, int(base)) for (rel, lo, _), base in zip(kept, hid_base)]
    n_total = int(hid_base[-1])
    gen = run.notes["index_generation"]
    where = f"{history.INDEX}/{gen[:16]}"
    files: dict[str, dict] = {}
    jobs = []
    for kind in key_kinds(run.cfg):
        parts = [(spill.key_rel(s, kind), 0, int(off[kind][-1])) for s, off in enumerate(layout) if off[kind][-1] > 0]
        jobs.append({"scratch": run.scratch, "store": run.store, "kind": kind, "parts": parts, "hids": hids,
                     "n_hist": n_hist, "n": n_hist + ranking.n, "rel": f"{where}/{kind}.bin"})
    for r in run.map(history.write_index_keys, jobs):
        files[f"{r['kind']}.bin"] = r["entry"]
    mh = run.cfg["minhash"]
    refresh = run.notes.get("refresh")
    earlier = history.segments(refresh.index) if refresh is not None else []
    survived = list(zip(survivors, hid_base[:-1].tolist()))
    if mh["enabled"] and mh["verify_threshold"] is not None:
        job = {"scratch": run.scratch, "store": run.store, "num_perm": mh["bands"] * mh["rows"], "n_total": n_total,
               "survivors": survived,
               "signatures": [spill.signature_rel(s) for s in range(len(ranking.rows))], "rel": f"{where}/{SIGNATURE_KIND}"}
        files[SIGNATURE_KIND] = run.map(history.write_index_signatures, [job])[0]["entry"]
    job = {"scratch": run.scratch, "store": run.store, "survivors": survivors, "sources": ranking.sources,
           "added": gen, "rel": f"{where}/{history.RECORDS}"}
    files[history.RECORDS], files[history.IDS] = run.map(history.write_index_records, [job])[0], run.map(
        history.write_index_ids, [{**job, "survivors": survived, "rel": f"{where}/{history.IDS}"}])[0]
    segments = earlier + [{"generation": gen, "records": n_total - n_hist, "files": dict(sorted(files.items()))}]
    log.info("%s: dedup index: %d records in %d segments (%d added)", STAGE, n_total, len(segments), n_total - n_hist)
    return {"key": history.index_key(run), "generation": gen, "records": n_total, "segments": segments,
            "fingerprint": history.index_fingerprint(segments)}


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


def texts_of(inputs: list[str], shard: np.ndarray, row: np.ndarray) -> list[str]:
    """Texts of records given as (shard, row), re-read one shard at a time (text column only)."""
    out: list = [None] * len(shard)
    for s in np.unique(shard).tolist():
        mine = np.flatnonzero(shard == s)
        for k, text in zip(mine.tolist(), read_text_column(inputs[s]).take(pa.array(row[mine])).to_pylist()):
            out[k] = text
    return out


def semantic_pass(run, inputs: list[str], survivors: list[str], id_width: int, cfg: dict) -> dict:
    """Semantic dedup of the records exact + fuzzy dedup kept; writes the kept records' embeddings and the
    semantic decisions (by shard). It runs on the driver, which holds those records' embeddings: unlike the
    rest of dedup, its memory grows with the corpus.

    Records are embedded in keep-rank order, so k-means (and so the result) does not depend on sharding.
    """
    kept = [spill.load_array(run.scratch, rel) for rel in survivors]
    kept = np.concatenate(kept) if kept else np.zeros(0, survivor_dtype(id_width))  # rank order
    emb = semantic.embed(texts_of(inputs, kept["shard"], kept["row"]), batch_size=cfg["batch_size"],
                         max_tokens=cfg["max_tokens"])
    local = semantic.semantic_duplicates(emb, kept["rank"], n_clusters=cfg["clusters"], threshold=cfg["threshold"],
                                         seed=cfg["seed"])
    dup = local >= 0
    run.write_artifact(semantic.EMBEDDINGS_FILE, lambda tmp: semantic.write_embeddings(
        tmp, [i.decode() for i in kept["id"][~dup]], emb[~dup]))
    group = np.bincount(local[dup], minlength=len(kept)) + 1  # a kept record and its semantic dups
    heads = np.unique(local[dup])
    rec = np.empty(int(dup.sum()) + len(heads), semantic_dtype(id_width))
    members = np.r_[np.flatnonzero(dup), heads].astype(np.int64)
    named = np.r_[local[dup], heads].astype(np.int64)
    rec["shard"], rec["row"], rec["head"] = kept["shard"][members], kept["row"][members], kept["id"][named]
    rec["dropped"], rec["size"] = np.r_[np.ones(dup.sum(), np.uint8), np.zeros(len(heads), np.uint8)], group[named]
    log.info("%s: semantic dedup of %d records dropped %d (threshold %.3f)", STAGE, len(kept), int(dup.sum()),
             cfg["threshold"])
    return {"file": ("final/semantic.bin", by_shard(run.scratch, "final/semantic.bin", rec, len(inputs))),
            "dtype": rec.dtype.descr}


REASON_OF = {EXACT_COPY: EXACT_DUP, URL_COPY: DUPLICATE_URL, NEAR: NEAR_DUP, CONTAMINATED_CODE: CONTAMINATED,
             SEMANTIC_CODE: SEMANTIC_DUP}


def apply_decisions(task: ShardTask) -> ShardResult:
    """Pass 3 for one shard: split its records into kept and removed by the global decisions."""
    if "dec" not in task.context:
        raise RuntimeError(f"{STAGE}/{task.shard}: no global decisions for this shard (pass 2 did not run)")
    table = read_shard(task.inputs[0])
    table = table.drop_columns([c for c in DUP_COLUMNS if c in table.column_names])  # recomputed here
    drops, heads, flagged = shard_decisions(task.context, table.num_rows)
    sets = task.context["sets"]
    flags = {row: [sets[j] for j in found] for row, found in flagged.items()}
    ids = table.column("id").to_pylist()
    rows = range(len(ids))
    table = table.append_column("dup_of", pa.array([drops[r][1] if r in drops else None for r in rows], pa.string()))
    table = table.append_column("dup_cluster", pa.array(  # semantic dups name their kept record too
        [drops[r][1] if r in drops else (ids[r] if r in heads else None) for r in rows], pa.string()))
    table = table.append_column("contamination", pa.array([",".join(flags[r]) if r in flags else None for r in rows],
                                                          pa.string()))
    keep = pa.array([r not in drops for r in rows], pa.bool_())
    kept, gone = table.filter(keep), table.filter(pc.invert(keep))
    gone_rows = [r for r in rows if r in drops]
    reasons = [REASON_OF[drops[r][0]] for r in gone_rows]
    details = [json.dumps(_detail(REASON_OF[drops[r][0]], drops[r], flags.get(r)), sort_keys=True) for r in gone_rows]

    stats = ShardStats(shard=task.shard, records_in=table.num_rows)
    stats.bytes_in = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
    for reason in REASONS:
        stats.drop(reason, reasons.count(reason))
    stats.extra["clusters"] = float(len(heads))
    for name in sets:  # flagged records per benchmark (dropped or not, by mode)
        stats.extra[f"{CONTAMINATED}__{name}"] = float(sum(1 for f in flags.values() if name in f))
    return ShardResult(kept, removed_table(gone, reasons, details), stats)


def _detail(reason: str, drop: tuple, flags) -> dict:
    _, head, size, run_key = drop
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
        previous = (load_manifest_if_any(run.out_dir) or {}).get("index")
        history.remove_other_indexes(run, keep={gen[:16], *(history.segment_dirs(previous) if previous else ())})
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
            # Segments no longer in the index go now (a crash before the manifest is written costs a full rebuild).
            history.remove_other_indexes(run, keep=history.segment_dirs(run.notes["index"]))
        if "cross_source" in run.notes:
            out["cross_source"] = run.notes["cross_source"]
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
