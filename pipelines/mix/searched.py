"""The searched phase-1 mixture: per-record weights that realise ``data/mixture/mixture.json``'s domain
shares, and the realised vs target share of every domain."""
from __future__ import annotations

import json

import numpy as np

from pipelines import stages
from pipelines.config import resolve
from pipelines.core.shards import read_shard

MIXTURE_DIR = stages.output("mixture_search")
UNASSIGNED = "_unassigned"  # records of a dropped cluster (phase 2 may still hold them via their source)


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


def domain_shares(rows: np.ndarray, chars: np.ndarray, doms: np.ndarray, target: dict[str, float]) -> dict:
    """Realised char share per domain of a blend's rows vs the target (normalised over domains)."""
    names = sorted({d for d, v in target.items() if v > 0} | set(doms[rows]))
    got = {d: int(chars[rows][doms[rows] == d].sum()) for d in names}
    total, want = sum(got.values()) or 1, sum(v for v in target.values() if v > 0) or 1.0
    return {d: {"chars": got[d], "rows": int((doms[rows] == d).sum()), "share": got[d] / total,
                "target_share": float(max(target.get(d, 0.0), 0.0)) / want} for d in names}
