"""The blend plan: every record's fate (held out, copies in each phase, or dropped with a reason).

Every decision is a seeded hash of the record id, so the blends do not depend on the input
shard layout, and the plan reads only ids, sources, text lengths and quality scores: at
corpus scale it holds a few numbers per record, never texts.
"""
from __future__ import annotations

import fnmatch
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.mix.sampling import copies, heldout_key, unit_hash, weight_for

PHASES = ("phase1", "phase2")
HELDOUT = "heldout"
DROP_REASONS = ["heldout", "excluded_source", "subsampled", "duplicate_id", "empty_text"]
REMOVED_REASONS = DROP_REASONS[1:]  # held-out records are kept, under heldout/


def heldout_mask(ids: list[str], sources: list[str], frac: float, min_heldout: int) -> np.ndarray:
    """Per source: ids hashing under ``frac``; topped up to ``min_heldout`` (lowest hashes first), or to
    half the source's records when it has fewer than twice that many, so at least half stays trainable
    and a small source is still measured."""
    keys = np.fromiter((heldout_key(i) for i in ids), dtype=np.float64, count=len(ids))
    mask = keys < frac
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    for rows in by_source.values():
        rows = np.asarray(rows)
        target = min(min_heldout, len(rows) // 2)
        if mask[rows].sum() < target:
            # A threshold on the key (not a count) keeps records with the same id together.
            threshold = np.sort(keys[rows])[target - 1]
            mask[rows] = keys[rows] <= threshold
    return mask


def shuffle_order(ids: list[str], copy: np.ndarray, seed, purpose: str) -> np.ndarray:
    """A seeded permutation that depends on (id, copy) only, not on the input order."""
    keys = np.fromiter((unit_hash(seed, purpose, i, int(c)) for i, c in zip(ids, copy)), dtype=np.float64, count=len(ids))
    return np.lexsort((copy, np.asarray(ids, dtype=object).astype(str), keys)) if len(ids) else np.zeros(0, np.int64)


def phase2_weights(table: pa.Table, held: np.ndarray, cfg: dict) -> tuple[np.ndarray, dict]:
    """Per-record phase-2 bonus weight (source weight + top-quality bonus + target-cluster bonus) and what
    was chosen: the raw weights ``anneal_weights`` turns into copies."""
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


def anneal_weights(w1: np.ndarray, w2: np.ndarray, chars: np.ndarray, trainable: np.ndarray,
                   upsampled: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, dict]:
    """The phase-2 rule: a phase-2 weight multiplies a record's phase-1 share.

    Sizes are characters (the mix stage never tokenises). Phase 2 (before the replay slice) holds as many
    characters as phase 1 is expected to. A source with phase-2 weight w > 1 (``upsampled``) gets exactly
    w x its phase-1 characters, so its share of phase 2 is w x its phase-1 share; every other record fills
    what is left in proportion to phase-1 weight x phase-2 weight (source weight + bonuses). So a weight
    > 1 always raises the source's share (the replay slice has phase-1 shares, so it only dilutes the rise),
    and a weight set the upsampled sources cannot fit into phase 2 (sum of w x phase-1 share > 1) is an error.
    Returns the per-record expected copies in phase 2 and the accounting for blend.json."""
    base = w1 * chars * trainable  # expected phase-1 characters per record
    raw = w1 * w2 * chars * trainable
    total, up = float(base.sum()), float(raw[upsampled].sum())
    rest = float(raw[~upsampled].sum())
    if total > 0 and up > total * (1 + 1e-12):
        shares = {s: round(float(raw[upsampled & (sources == s)].sum()) / total, 4) for s in sorted(set(sources[upsampled]))}
        raise ValueError(f"params mix.phase2.weights: the upsampled sources (weight > 1) would need {up / total:.1%} of "
                         f"phase 2 (weight x phase-1 share: {shares}); lower their weights so the sum stays under 100%")
    scale = (total - up) / rest if rest > 0 else 0.0
    out = np.where(upsampled, w1 * w2, w1 * w2 * scale)
    per_source = {}
    for s in sorted(set(sources[trainable])):
        sel = sources == s
        per_source[s] = {"phase1_share": float(base[sel].sum()) / total if total else 0.0,
                         "phase2_share": float((out * chars * trainable)[sel].sum()) / total if total else 0.0}
    return out, {"rule": "weight x phase-1 share; the rest rescaled to fill phase 2", "rest_scale": scale,
                 "phase1_chars": total, "upsampled": sorted(set(sources[upsampled & trainable])),
                 "expected_share_before_replay": per_source}


def plan(table: pa.Table, cfg: dict, held: np.ndarray | None = None) -> dict:
    """Decide every record's fate: held out, rows in each phase, or dropped (with reason).

    ``table`` holds what the decisions read, never texts: ``id``, ``source``, ``chars`` (text length)
    and ``quality_score`` when the input has it. ``held``: the held-out mask when the caller already
    computed it (copied, not modified)."""
    ids = table.column("id").to_pylist()
    sources = table.column("source").to_pylist()
    seed, w1s = cfg["seed"], cfg["weights"]["phase1"]
    if held is None:
        held = heldout_mask(ids, sources, cfg["heldout_fraction"], cfg["min_heldout"])
    else:
        held = held.copy()  # updated below (duplicate / empty records are not held out)
    src_w = {s: weight_for(s, w1s) for s in set(sources)}
    searched = cfg.get("searched")  # {"record_weight": {id: phase-1 weight}} when phase1.source = searched
    chars = table.column("chars").to_numpy(zero_copy_only=False).astype(np.float64)
    first: dict[str, int] = {}
    trainable = ~held & (chars > 0) & np.asarray([first.setdefault(r, i) == i for i, r in enumerate(ids)], dtype=bool)
    if searched is not None:
        w1_rec = np.asarray([searched["record_weight"].get(r, 0.0) for r in ids], dtype=np.float64)
    else:
        w1_rec = np.asarray([src_w[s] or 0.0 for s in sources], dtype=np.float64)
    src_w2 = {s: weight_for(s, cfg["weights"]["phase2"]) or 0.0 for s in set(sources)}
    upsampled = np.asarray([src_w2[s] > 1.0 for s in sources], dtype=bool)
    w2_raw, phase2_info = phase2_weights(table, held, cfg)
    w2_rec, phase2_info["anneal"] = anneal_weights(w1_rec, w2_raw, chars, trainable, upsampled,
                                                   np.asarray(sources, dtype=object))

    p1_rows, p1_copy = [], []
    p2_rows, p2_copy, p2_replay = [], [], []
    reasons: list[str | None] = [None] * len(ids)
    details: list[str | None] = [None] * len(ids)
    empty = table.column("chars").to_numpy(zero_copy_only=False) == 0  # empty or null text
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
        w1 = float(w1_rec[i]) if searched is not None or src_w[src] is not None else None
        w2 = float(w2_rec[i])
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
