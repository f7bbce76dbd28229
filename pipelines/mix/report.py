"""``blend.json``: what each blend holds (records, chars and shares per source and per domain) against
what the weights intended; ``check_mix`` compares the two."""
from __future__ import annotations

import numpy as np

from pipelines.mix.plan import PHASES, REMOVED_REASONS
from pipelines.mix.sampling import weight_for
from pipelines.mix.searched import UNASSIGNED, domain_shares


def blend_report(chars: np.ndarray, decided: dict, cfg: dict) -> dict:
    """Realised vs intended shares per source (and per domain, with the searched mixture) in each phase."""
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


# ---- reading blend.json back (the gates of mix and pack)

SHARE_KEYS = ("share", "realised_share", "realized_share", "actual_share")
TARGET_KEYS = ("target_share", "target")
COUNT_KEYS = ("records", "unique_records", "chars")


def _number(d: dict, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _sources(phase_info) -> list[tuple[str, dict]]:
    if isinstance(phase_info, dict):
        inner = phase_info.get("sources", phase_info)
    else:
        inner = phase_info
    if isinstance(inner, dict):
        return [(str(k), v) for k, v in sorted(inner.items()) if isinstance(v, dict)]
    if isinstance(inner, list):
        return sorted(((str(v["source"]), v) for v in inner if isinstance(v, dict) and "source" in v),
                      key=lambda kv: kv[0])
    return []


def _phases(blend) -> list[tuple[str, object]]:
    if isinstance(blend, list):  # flat rows: [{"phase": .., "source": .., ...}]
        by_phase: dict[str, list] = {}
        for row in blend:
            if isinstance(row, dict) and "phase" in row:
                by_phase.setdefault(str(row["phase"]), []).append(row)
        return sorted(by_phase.items())
    if not isinstance(blend, dict):
        return []
    phases = blend.get("phases", blend)
    if isinstance(phases, dict):
        return [(str(k), v) for k, v in sorted(phases.items()) if isinstance(v, (dict, list))]
    return []


def blend_rows(blend) -> list[dict]:
    """Rows with phase, source, counts, share, target_share and share_error (None where not computable)."""
    rows = []
    for phase, info in _phases(blend):
        for source, s in _sources(info):
            share, target = _number(s, SHARE_KEYS), _number(s, TARGET_KEYS)
            counts = {k: _number(s, (k,)) for k in COUNT_KEYS}
            if share is None and target is None and all(v is None for v in counts.values()):
                continue  # not a per-source entry (e.g. a nested config dict)
            rows.append({
                "phase": phase, "source": source, **counts, "share": share, "target_share": target,
                "share_error": abs(share - target) if share is not None and target is not None else None,
            })
    return rows
