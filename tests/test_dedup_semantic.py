"""Semantic dedup building block: real MiniLM embeddings (offline package), k-means, threshold on cosine."""
from __future__ import annotations

import numpy as np

from pipelines.dedup.semantic import embed, semantic_duplicates

from test_dedup import _news, _scenes


def test_paraphrase_level_duplicates_are_found_and_distinct_texts_kept():
    news = [" ".join(t.split()[:120]) for t in _news(6)]  # short enough that truncation (256 tokens) keeps all of it
    modern = _scenes("macbeth", False, max_words=150)[:3]
    # The same news text with its sentences reordered: different n-grams, same meaning.
    reordered = [". ".join(reversed(t.split(". "))) for t in news[:3]]
    texts = news + reordered + modern
    emb = embed(texts)
    assert emb.shape == (len(texts), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    sims = emb @ emb.T
    assert all(sims[i, 6 + i] > 0.9 for i in range(3))  # reordered copies stay close
    assert max(sims[i, j] for i in range(6) for j in range(6) if i != j) < 0.9  # distinct stories do not
    rank = np.arange(len(texts))
    dup_of = semantic_duplicates(emb, rank, n_clusters=3, threshold=0.9, seed=0)
    assert dup_of[6:9].tolist() == [0, 1, 2]  # each reordered copy points to its original (better ranked)
    assert (dup_of[:6] == -1).all() and (dup_of[9:] == -1).all()
    # Keep order decides which side survives.
    dup_of = semantic_duplicates(emb, rank[::-1].copy(), n_clusters=3, threshold=0.9, seed=0)
    assert dup_of[:3].tolist() == [6, 7, 8]
