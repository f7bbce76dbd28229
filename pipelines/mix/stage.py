"""mix: ``data/select`` -> ``data/mix/{heldout,phase1,phase2}`` plus ``blend.json``.

1. Held-out split per source by a hash of the id (never trained on).
2. Phase 1 (diverse): every other record repeated per ``mix.phase1.weights``.
3. Phase 2 (anneal): high-quality slices upsampled plus a replay slice of phase-1 rows
   (each joins with probability ``replay_fraction``). A record's phase-2 weight is the sum
   of its source's ``mix.phase2.weights`` (curated sources), ``top_quality.weight`` when its
   quality_score is in the top ``top_quality.fraction`` of its group (web sources by default)
   and, with the searched phase-1 mixture, ``clusters.weight`` when its web cluster is one of
   the ``clusters.top`` clusters the search weighted most (the target-domain clusters).
   With the searched mixture, every blend row carries its domain (``mix_domain``) and
   ``blend.json`` holds realised vs target shares per source and per domain for both phases.

Every decision is a seeded hash of the record id, so the blends do not depend
on the input shard layout. Each output is a stage directory of its own
(shards, ``_manifest.json``, ``_stats.parquet``), shuffled by a seeded hash and
cut into shards of at most ``max_rows_per_shard`` rows. ``data/mix`` itself
holds the accounting: per input shard, ``records_in = records_out`` (the
training pool) ``+ drop__heldout + drop__excluded_source + drop__subsampled``;
``removed/`` keeps every excluded/subsampled record whole (held-out records
live in ``heldout/``).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import resolve, section
from pipelines.core.atomic import write_json_atomic
from pipelines.core.hashing import canonical_json, sha256_bytes, sha256_file, stage_hash
from pipelines.core.manifest import MANIFEST, file_entry, load_manifest, write_fragment
from pipelines.core.shards import read_shard, require_shards, shard_name, write_shard
from pipelines.core.stage import (
    REMOVED, ShardResult, ShardTask, clean_output_dir, finalize, finish_stats, removed_table, write_shard_outputs,
)
from pipelines.core.stats import ShardStats
from pipelines.mix.sampling import copies, heldout_key, unit_hash, validate_weights, weight_for

log = logging.getLogger(__name__)

IN_DIR = "data/select"
OUT_DIR = "data/mix"
PHASES = ("phase1", "phase2")
HELDOUT = "heldout"
BLEND = "blend.json"
DROP_REASONS = ["heldout", "excluded_source", "subsampled", "duplicate_id", "empty_text"]
REMOVED_REASONS = DROP_REASONS[1:]  # held-out records are kept, under heldout/


# ---------------------------------------------------------------- params

def _config(params: dict) -> dict:
    cfg = section(params, "mix")
    frac = float(cfg.get("heldout_fraction", 0.0))
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"params mix.heldout_fraction must be in [0, 1), got {frac}")
    min_heldout = int(cfg.get("min_heldout_per_source", 0))
    if min_heldout < 0:
        raise ValueError(f"params mix.min_heldout_per_source must be >= 0, got {min_heldout}")
    phase1, phase2 = cfg.get("phase1") or {}, cfg.get("phase2") or {}
    replay = float(phase2.get("replay_fraction", 0.0))
    if not 0.0 <= replay <= 1.0:
        raise ValueError(f"params mix.phase2.replay_fraction must be in [0, 1], got {replay}")
    max_rows = int(cfg.get("max_rows_per_shard", 20000))
    if max_rows < 1:
        raise ValueError(f"params mix.max_rows_per_shard must be >= 1, got {max_rows}")
    tq, cl = phase2.get("top_quality") or {}, phase2.get("clusters") or {}
    top_quality = {"fraction": float(tq.get("fraction", 0.0)), "weight": float(tq.get("weight", 0.0)),
                   "sources": [str(x) for x in tq.get("sources", ["cc-*", "web"])]}
    if not 0.0 <= top_quality["fraction"] <= 1.0 or top_quality["weight"] < 0:
        raise ValueError(f"params mix.phase2.top_quality needs fraction in [0, 1] and weight >= 0, got {tq}")
    clusters = {"top": int(cl.get("top", 0)), "weight": float(cl.get("weight", 0.0))}
    if clusters["top"] < 0 or clusters["weight"] < 0:
        raise ValueError(f"params mix.phase2.clusters needs top >= 0 and weight >= 0, got {cl}")
    source = phase1.get("source", "weights")
    if source not in ("weights", "searched"):
        raise ValueError(f"params mix.phase1.source must be 'weights' or 'searched', got {source!r}")
    return {
        "phase1_source": source,
        "seed": params.get("seed", 0),
        "heldout_fraction": frac,
        "min_heldout": min_heldout,
        "weights": {
            "phase1": validate_weights(phase1.get("weights"), "mix.phase1.weights"),
            "phase2": validate_weights(phase2.get("weights"), "mix.phase2.weights"),
        },
        "replay_fraction": replay,
        "top_quality": top_quality,
        "clusters": clusters,
        "max_rows": max_rows,
    }


# ---------------------------------------------------------------- decisions

def heldout_mask(ids: list[str], sources: list[str], frac: float, min_heldout: int) -> np.ndarray:
    """Per source: ids hashing under ``frac``; topped up to ``min_heldout`` (lowest hashes first)
    when the source has at least twice that many records, so most of it stays trainable."""
    keys = np.fromiter((heldout_key(i) for i in ids), dtype=np.float64, count=len(ids))
    mask = keys < frac
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    for rows in by_source.values():
        rows = np.asarray(rows)
        if mask[rows].sum() < min_heldout and len(rows) >= 2 * min_heldout and min_heldout > 0:
            # A threshold on the key (not a count) keeps records with the same id together.
            threshold = np.sort(keys[rows])[min_heldout - 1]
            mask[rows] = keys[rows] <= threshold
    return mask


def _shuffle_order(ids: list[str], copy: np.ndarray, seed, purpose: str) -> np.ndarray:
    """A seeded permutation that depends on (id, copy) only, not on the input order."""
    keys = np.fromiter((unit_hash(seed, purpose, i, int(c)) for i, c in zip(ids, copy)), dtype=np.float64, count=len(ids))
    return np.lexsort((copy, np.asarray(ids, dtype=object).astype(str), keys)) if len(ids) else np.zeros(0, np.int64)


def phase2_weights(table: pa.Table, held: np.ndarray, cfg: dict) -> tuple[np.ndarray, dict]:
    """Per-record phase-2 weight (source weight + top-quality bonus + target-cluster bonus) and what was chosen."""
    ids, sources = table.column("id").to_pylist(), table.column("source").to_pylist()
    distinct = set(sources)  # pattern matching once per source, not per record
    src_w2 = {s: weight_for(s, cfg["weights"]["phase2"]) or 0.0 for s in distinct}
    w2 = np.asarray([src_w2[s] for s in sources], dtype=np.float64)
    info: dict = {}
    tq = cfg["top_quality"]
    if tq["fraction"] > 0 and tq["weight"] > 0:
        if "quality_score" not in table.column_names:
            raise ValueError("params mix.phase2.top_quality needs a quality_score column in data/select")
        q = pc.fill_null(pc.cast(table.column("quality_score"), pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        in_group = {s: any(fnmatch.fnmatchcase(s, pat) for pat in tq["sources"]) for s in distinct}
        group = np.asarray([in_group[s] for s in sources])
        pool = group & ~held & ~np.isnan(q)
        threshold = float(np.quantile(q[pool], 1.0 - tq["fraction"])) if pool.any() else math.inf
        top = pool & (q >= threshold)
        w2[top] += tq["weight"]
        info["top_quality"] = {**tq, "threshold": threshold, "records": int(top.sum()), "group_records": int(pool.sum())}
    searched = cfg.get("searched")
    cl = cfg["clusters"]
    if searched is not None and cl["top"] > 0 and cl["weight"] > 0:
        ranked = sorted((d for d in searched["target_share"] if d.startswith("cluster_")),
                        key=lambda d: (-searched["target_share"][d], d))[: cl["top"]]
        member = np.asarray([searched["domain"].get(i, "") in ranked for i in ids])
        w2[member] += cl["weight"]
        info["clusters"] = {**cl, "upsampled": ranked, "records": int(member.sum())}
    elif cl["top"] > 0:
        info["clusters"] = {**cl, "upsampled": [], "note": "needs mix.phase1.source: searched (cluster ids)"}
    return w2, info


def plan(table: pa.Table, cfg: dict, held: np.ndarray | None = None) -> dict:
    """Decide every record's fate: held out, rows in each phase, or dropped (with reason).
    ``held``: the held-out mask when the caller already computed it (copied, not modified)."""
    ids = table.column("id").to_pylist()
    sources = table.column("source").to_pylist()
    seed, w1s = cfg["seed"], cfg["weights"]["phase1"]
    if held is None:
        held = heldout_mask(ids, sources, cfg["heldout_fraction"], cfg["min_heldout"])
    else:
        held = held.copy()  # updated below (duplicate / empty records are not held out)
    src_w = {s: weight_for(s, w1s) for s in set(sources)}
    w2_rec, phase2_info = phase2_weights(table, held, cfg)
    searched = cfg.get("searched")  # {"record_weight": {id: phase-1 weight}} when phase1.source = searched

    p1_rows, p1_copy = [], []
    p2_rows, p2_copy, p2_replay = [], [], []
    reasons: list[str | None] = [None] * len(ids)
    details: list[str | None] = [None] * len(ids)
    lengths = pc.fill_null(pc.utf8_length(table.column("text")), 0)
    empty = lengths.to_numpy(zero_copy_only=False) == 0  # empty or null text
    first_row: dict[str, int] = {}
    for i, (rid, src) in enumerate(zip(ids, sources)):
        if empty[i]:
            held[i] = False
            reasons[i] = "empty_text"  # nothing to train on (select should not pass these)
            continue
        # Ids are unique after dedup; a repeat would make (id, blend_copy) ambiguous downstream.
        if first_row.setdefault(rid, i) != i:
            held[i] = False
            reasons[i] = "duplicate_id"
            details[i] = json.dumps({"first_row": first_row[rid]})
            continue
        if held[i]:
            reasons[i] = "heldout"
            continue
        w1, w2 = src_w[src], float(w2_rec[i])
        if searched is not None:
            w1 = searched["record_weight"].get(rid, 0.0)
        n1 = copies(w1, seed, rid, "phase1") if w1 else 0
        n2 = copies(w2, seed, rid, "phase2") if w2 else 0
        replayed = [c for c in range(n1) if unit_hash(seed, rid, c, "replay") < cfg["replay_fraction"]]
        for c in range(n1):
            p1_rows.append(i)
            p1_copy.append(c)
        # Phase-2 copies first, then the replayed phase-1 rows: blend_copy stays unique per (id, phase).
        for c in range(n2 + len(replayed)):
            p2_rows.append(i)
            p2_copy.append(c)
            p2_replay.append(c >= n2)
        if n1 == 0 and n2 == 0:
            if not w1 and not w2:
                reasons[i] = "excluded_source"
                details[i] = json.dumps({"phase1_weight": w1, "phase2_weight": w2}, sort_keys=True)
            else:
                reasons[i] = "subsampled"
                details[i] = json.dumps({"phase1_weight": w1, "phase2_weight": w2}, sort_keys=True)
    return {
        "ids": ids, "sources": sources, "heldout": held, "reasons": reasons, "details": details,
        "phase2_weight": w2_rec, "phase2_info": phase2_info,
        "phase1": (np.asarray(p1_rows, np.int64), np.asarray(p1_copy, np.int32), np.zeros(len(p1_rows), bool)),
        "phase2": (np.asarray(p2_rows, np.int64), np.asarray(p2_copy, np.int32), np.asarray(p2_replay, bool)),
    }


def phase_table(table: pa.Table, ids: list[str], rows: np.ndarray, copy: np.ndarray, replay: np.ndarray,
                seed, phase: str, domain_of: dict | None = None) -> pa.Table:
    order = _shuffle_order([ids[r] for r in rows], copy, seed, phase)
    rows, copy, replay = rows[order], copy[order], replay[order]
    out = table.take(pa.array(rows, pa.int64()))
    out = out.append_column(pa.field("blend_copy", pa.int32(), nullable=False), pa.array(copy, pa.int32()))
    origin = np.where(replay, "replay", phase)
    out = out.append_column(pa.field("blend_origin", pa.string()), pa.array(origin.tolist(), pa.string()))
    if domain_of is not None:  # searched mixture: the domain (curated source / web cluster) of every row
        out = out.append_column(pa.field("mix_domain", pa.string()),
                                pa.array([domain_of.get(ids[r]) or None for r in rows], pa.string()))
    return out


# ---------------------------------------------------------------- writing

def write_dataset(out_dir: Path, stage: str, table: pa.Table, max_rows: int, inputs_hash: str, ph: str) -> dict:
    """One stage output dir: shards of <= max_rows rows (at least one, maybe empty), stats, manifest."""
    n_shards = max(1, math.ceil(table.num_rows / max_rows))
    names = [shard_name(i) for i in range(n_shards)]
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_output_dir(out_dir, set(names))
    fragments = []
    for i, name in enumerate(names):
        part = table.slice(i * max_rows, max_rows)
        task = ShardTask(stage=stage, shard=name, inputs=[], out_dir=str(out_dir), params={}, params_hash=ph,
                         fingerprints={IN_DIR: inputs_hash})
        stats = ShardStats(shard=name, records_in=part.num_rows)
        finish_stats(stats, part)
        stats.bytes_in = stats.bytes_out
        fragments.append(write_shard_outputs(task, ShardResult(part, None, stats)))
    return finalize(out_dir, stage, ph, fragments, [])


def _text_bytes(table: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0


def write_accounting(out_dir: Path, table: pa.Table, shard_of: np.ndarray, shard_names: list[str],
                     fingerprints: dict, decided: dict, ph: str) -> list[dict]:
    """Per input shard: the stats fragment and removed/ (excluded and subsampled records, whole)."""
    clean_output_dir(out_dir, set(shard_names))
    reasons = np.asarray([r or "" for r in decided["reasons"]], dtype=object)
    n1 = np.bincount(decided["phase1"][0], minlength=table.num_rows)
    n2 = np.bincount(decided["phase2"][0], minlength=table.num_rows)
    replay = np.bincount(decided["phase2"][0][decided["phase2"][2]], minlength=table.num_rows)
    fragments = []
    for k, name in enumerate(shard_names):
        rows = np.flatnonzero(shard_of == k)
        part = table.take(pa.array(rows, pa.int64()))
        stats = ShardStats(shard=name, records_in=len(rows), bytes_in=_text_bytes(part))
        for reason in DROP_REASONS:
            stats.drops[reason] = int((reasons[rows] == reason).sum())
        pool = rows[reasons[rows] == ""]
        removed_rows = rows[np.isin(reasons[rows], REMOVED_REASONS)]
        stats.extra = {"heldout": float(stats.drops["heldout"]), "phase1_rows": float(n1[rows].sum()),
                       "phase2_rows": float(n2[rows].sum()), "replay_rows": float(replay[rows].sum())}
        pool_table = table.take(pa.array(pool, pa.int64()))
        removed = None
        if len(removed_rows):
            removed = removed_table(table.take(pa.array(removed_rows, pa.int64())),
                                    [decided["reasons"][r] for r in removed_rows],
                                    [decided["details"][r] for r in removed_rows])
        finish_stats(stats, pool_table)
        if stats.records_in != stats.records_out + stats.records_dropped:
            raise AssertionError(f"mix/{name}: records do not balance: {stats.to_dict()}")
        # The pool itself is not written (the phases are the datasets): the fragment holds the accounting.
        files = {}
        if removed is not None:
            write_shard(out_dir / REMOVED / name, removed)
            files[f"{REMOVED}/{name}"] = file_entry(out_dir / REMOVED / name, rows=removed.num_rows)
        fragment = {"shard": name, "inputs": {name: fingerprints[name]}, "params_hash": ph, "files": files,
                    "stats": stats.to_dict()}
        write_fragment(out_dir, name, fragment)
        fragments.append(fragment)
    return fragments


# ---------------------------------------------------------------- blend report

def blend_report(table: pa.Table, decided: dict, phase_tables: dict[str, pa.Table], cfg: dict) -> dict:
    chars = pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)
    sources = np.asarray(decided["sources"], dtype=object)
    reasons = np.asarray([r or "" for r in decided["reasons"]], dtype=object)
    trainable = ~decided["heldout"] & ~np.isin(reasons, ["duplicate_id", "empty_text"])

    def per_source(rows: np.ndarray, replay: np.ndarray | None = None) -> dict:
        out = {}
        for s in sorted(set(sources[rows])):
            sel = rows[sources[rows] == s]
            entry = {"records": int(len(sel)), "unique_records": int(len(np.unique(sel))), "chars": int(chars[sel].sum())}
            if replay is not None:
                entry["replay_records"] = int(replay[sources[rows] == s].sum())
            out[s] = entry
        total = sum(e["chars"] for e in out.values()) or 1
        for e in out.values():
            e["share"] = e["chars"] / total
        return out

    # Intended chars: weight x the source's trainable chars (plus, in phase 2, the replay slice).
    pool_chars = {s: int(chars[trainable & (sources == s)].sum()) for s in sorted(set(sources))}
    p1 = per_source(decided["phase1"][0])
    if cfg.get("searched") is not None:
        rw = cfg["searched"]["record_weight"]
        w1_rec = np.asarray([rw.get(i, 0.0) for i in decided["ids"]], dtype=np.float64)
        intended_p1 = {s: float((w1_rec * chars)[trainable & (sources == s)].sum()) for s in sorted(set(sources))}
    else:
        intended_p1 = {s: (weight_for(s, cfg["weights"]["phase1"]) or 0.0) * c for s, c in pool_chars.items()}
    w2_chars = decided["phase2_weight"] * chars * trainable
    intended = {
        "phase1": intended_p1,
        "phase2": {s: float(w2_chars[sources == s].sum()) + cfg["replay_fraction"] * p1.get(s, {}).get("chars", 0)
                   for s in pool_chars},
    }
    phases = {}
    for phase in PHASES:
        rows, _, replay = decided[phase]
        srcs = per_source(rows, replay if phase == "phase2" else None)
        want = intended[phase]
        want_total = sum(want.values()) or 1.0
        for s, e in srcs.items():
            e["weight"] = weight_for(s, cfg["weights"][phase])
            e["target_share"] = want.get(s, 0.0) / want_total
        phases[phase] = {
            "rows": int(len(rows)),
            "unique_records": int(len(np.unique(rows))),
            "chars": int(chars[rows].sum()),
            "sources": srcs,
            "targets": {"weights": cfg["weights"][phase],
                        "target_share": {s: v / want_total for s, v in sorted(want.items()) if v > 0}},
        }
        assert phase_tables[phase].num_rows == len(rows)
    if cfg.get("searched") is not None:
        searched = cfg["searched"]
        doms = np.asarray([searched["domain"].get(i, "") or UNASSIGNED for i in decided["ids"]], dtype=object)
        phases["phase1"]["targets"]["source"] = "searched"
        phases["phase1"]["domains"] = domain_shares(decided["phase1"][0], chars, doms, searched["target_share"])
        for d, e in phases["phase1"]["domains"].items():
            e["repeat"] = searched["factor"].get(d, 0.0)
        p1_dom = {d: e["chars"] for d, e in phases["phase1"]["domains"].items()}
        want2 = {d: float(w2_chars[doms == d].sum()) + cfg["replay_fraction"] * p1_dom.get(d, 0)
                 for d in sorted(set(doms))}
        phases["phase2"]["domains"] = domain_shares(decided["phase2"][0], chars, doms, want2)
    phases["phase2"]["targets"].update(decided["phase2_info"])
    phases["phase2"]["targets"]["replay_fraction"] = cfg["replay_fraction"]
    phases["phase2"]["replay_rows"] = int(decided["phase2"][2].sum())
    held = np.flatnonzero(decided["heldout"])
    excluded = {}
    for reason in REMOVED_REASONS:
        rows = np.flatnonzero(reasons == reason)
        for s in sorted(set(sources[rows])):
            excluded.setdefault(s, {})[reason] = int((sources[rows] == s).sum())
    return {
        "seed": cfg["seed"],
        "heldout": {"records": int(len(held)), "fraction": cfg["heldout_fraction"],
                    "sources": {s: int((sources[held] == s).sum()) for s in sorted(set(sources[held]))}},
        "pool_chars": pool_chars,
        "phases": phases,
        "excluded": excluded,
    }


# ---------------------------------------------------------------- searched phase-1 mixture

MIXTURE_DIR = "data/mixture"


def searched_weights(ids: list[str], texts_chars: np.ndarray, trainable: np.ndarray) -> dict:
    """Per-record phase-1 weights that realise ``mixture.json``'s domain shares (in chars).

    A domain's records are repeated by ``target_share * total / domain_chars``, so the phase-1
    blend is about the pool's size and each domain holds its searched share; records of a dropped
    cluster (no domain) are left out.
    """
    mix_doc = json.loads((resolve(MIXTURE_DIR) / "mixture.json").read_text())
    target = mix_doc.get("phase1_weights") or {}
    if not target:
        raise ValueError("mix.phase1.source is 'searched' but data/mixture/mixture.json holds no phase1_weights "
                         "(set mixture.enabled: true and run mixture_search)")
    assign = read_shard(resolve(MIXTURE_DIR) / "domains.parquet", ["id", "domain"])
    domain_of = dict(zip(assign.column("id").to_pylist(), assign.column("domain").to_pylist()))
    doms = np.asarray([domain_of.get(i) or "" for i in ids], dtype=object)
    total = float(texts_chars[trainable & (doms != "")].sum())
    factor = {}
    for d, share in target.items():
        have = float(texts_chars[trainable & (doms == d)].sum())
        factor[d] = share * total / have if have else 0.0
    return {"record_weight": {i: factor.get(d, 0.0) for i, d in zip(ids, doms) if d},
            "domain": dict(zip(ids, doms)), "target_share": target, "factor": factor}


UNASSIGNED = "_unassigned"  # records of a dropped cluster (phase 2 may still hold them via their source)


def domain_shares(rows: np.ndarray, chars: np.ndarray, doms: np.ndarray, target: dict[str, float]) -> dict:
    """Realised char share per domain of a blend's rows vs the target (normalised over domains)."""
    names = sorted({d for d, v in target.items() if v > 0} | set(doms[rows]))
    got = {d: int(chars[rows][doms[rows] == d].sum()) for d in names}
    total, want = sum(got.values()) or 1, sum(v for v in target.values() if v > 0) or 1.0
    return {d: {"chars": got[d], "rows": int((doms[rows] == d).sum()), "share": got[d] / total,
                "target_share": float(max(target.get(d, 0.0), 0.0)) / want} for d in names}


# ---------------------------------------------------------------- entry point

def _files_intact(out_dir: Path, manifest: dict) -> bool:
    for shard in manifest.get("shards", {}).values():
        for rel, entry in shard.get("files", {}).items():
            p = out_dir / rel
            if not p.exists() or p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
                return False
    return True


def _up_to_date(out_dir: Path, fingerprints: dict, ph: str) -> dict | None:
    """The previous manifest when it was made from these inputs and params and every file is intact."""
    try:
        top = load_manifest(out_dir)
        if top.get("params_hash") != ph or top.get("inputs") != fingerprints or not (out_dir / BLEND).exists():
            return None
        if not _files_intact(out_dir, top):
            return None
        for sub in (HELDOUT, *PHASES):
            if not _files_intact(out_dir / sub, load_manifest(out_dir / sub)):
                return None
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    return top


def _summary(manifest: dict, skipped: bool) -> dict:
    return {"stage": "mix", "skipped": skipped, **manifest["totals"]}


def run(params: dict) -> dict:
    cfg = _config(params)
    in_dir, out_dir = resolve(IN_DIR), resolve(OUT_DIR)
    shards = require_shards(in_dir, "select")
    fingerprints = {p.name: sha256_file(p) for p in shards}
    if cfg["phase1_source"] == "searched":  # the searched mixture is an input too
        fingerprints["mixture"] = sha256_file(resolve(MIXTURE_DIR) / "mixture.json")
    ph = stage_hash("mix", {"seed": cfg["seed"], "mix": section(params, "mix")})
    previous = _up_to_date(out_dir, fingerprints, ph)
    if previous:
        log.info("mix: outputs already complete for these inputs and params, skipped")
        return _summary(previous, True)

    tables = [read_shard(p) for p in shards]
    for p, t in zip(shards, tables):
        missing = [c for c in ("id", "source", "text") if c not in t.column_names]
        if missing:
            raise ValueError(f"mix: input shard {p} lacks column(s) {missing}")
    shard_of = np.concatenate([np.full(t.num_rows, k, np.int32) for k, t in enumerate(tables)])
    table = pa.concat_tables(tables, promote_options="default")
    held = None
    if cfg["phase1_source"] == "searched":
        chars = pc.fill_null(pc.utf8_length(table.column("text")), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = table.column("id").to_pylist()
        held = heldout_mask(ids, table.column("source").to_pylist(), cfg["heldout_fraction"], cfg["min_heldout"])
        cfg = {**cfg, "searched": searched_weights(ids, chars, ~held)}
    decided = plan(table, cfg, held)  # reuses the searched path's held-out mask

    inputs_hash = sha256_bytes(canonical_json(fingerprints).encode())[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    held_rows = np.flatnonzero(decided["heldout"])
    held_ids = [decided["ids"][r] for r in held_rows]
    held_order = _shuffle_order(held_ids, np.zeros(len(held_rows), np.int32), cfg["seed"], HELDOUT)
    held_table = table.take(pa.array(held_rows[held_order], pa.int64()))
    sub_manifests = {HELDOUT: write_dataset(out_dir / HELDOUT, f"mix/{HELDOUT}", held_table, cfg["max_rows"], inputs_hash, ph)}
    phase_tables = {}
    for phase in PHASES:
        rows, copy, replay = decided[phase]
        phase_tables[phase] = phase_table(table, decided["ids"], rows, copy, replay, cfg["seed"], phase,
                                          cfg["searched"]["domain"] if cfg.get("searched") else None)
        sub_manifests[phase] = write_dataset(out_dir / phase, f"mix/{phase}", phase_tables[phase], cfg["max_rows"],
                                             inputs_hash, ph)

    fragments = write_accounting(out_dir, table, shard_of, [p.name for p in shards], fingerprints, decided, ph)
    write_json_atomic(out_dir / BLEND, blend_report(table, decided, phase_tables, cfg))
    pool = int(sum(f["stats"]["records_out"] for f in fragments))
    totals = {
        "shards": len(fragments),
        "records_in": table.num_rows,
        "rows": pool,  # the training pool (unique records in any blend)
        "heldout": len(held_rows),
        "dropped": {r: int(sum(f["stats"]["drops"].get(r, 0) for f in fragments)) for r in DROP_REASONS[1:]},
        **{f"{phase}_rows": phase_tables[phase].num_rows for phase in PHASES},
    }
    extra = {
        "inputs": fingerprints,
        "totals": totals,
        "outputs": {sub: {"manifest_sha256": sha256_file(out_dir / sub / MANIFEST), "rows": m["totals"]["rows"],
                          "shards": m["totals"]["shards"]} for sub, m in sorted(sub_manifests.items())},
    }
    manifest = finalize(out_dir, "mix", ph, fragments, DROP_REASONS, extra)
    log.info("mix: %s", totals)
    return _summary(manifest, False)
