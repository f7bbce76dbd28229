"""The ``mix`` params, validated, with their defaults filled in (all of it decides the blends)."""
from __future__ import annotations

from pipelines.config import section
from pipelines.mix.sampling import validate_weights


def mix_config(params: dict) -> dict:
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
