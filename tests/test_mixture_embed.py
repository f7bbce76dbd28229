"""The MiniLM embedder of the mixture search (real all-MiniLM-L6-v2, offline) and the reuse of
dedup's embedding cache: cached ids are read, only the missing ones are embedded."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.mixture_search import domains as dom
from tests.fixtures.mixture_toy import toy  # noqa: F401 (fixture)
from tests.fixtures.project import TEXT
from tests.fixtures.real_text import long_lines

DIM = 384


def _write_cache(path, vectors: dict[str, np.ndarray]) -> None:
    """The dedup stage's layout: id string, embedding fixed_size_list<float32>[384], sorted by id."""
    ids = sorted(vectors)
    flat = pa.array(np.concatenate([vectors[i] for i in ids]).astype(np.float32), pa.float32())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()),
                             "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM)}), path)


def _one_hot(k: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[k] = 1.0  # no sentence embeds to an axis: seeing it back proves the cache was used
    return v


class CountingEmbedder:
    """The real MiniLM embedder, counting the texts it is asked to embed."""

    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, texts):
        self.texts += texts
        return dom.minilm(texts)


def test_minilm_embeds_and_reuses_the_dedup_cache(tmp_path):
    news = long_lines(TEXT / "news" / "lee_background.cor", 4)
    texts = [news[0], news[0] + " ", news[1], news[2], news[3], "def add(a, b):\n    return a + b\n"]
    ids = [f"r{k}" for k in range(len(texts))]
    cache = tmp_path / "data" / "dedup" / "embeddings.parquet"
    # r1 and r3 are cached, plus an id the search does not need (it must not appear or be counted).
    _write_cache(cache, {"r1": _one_hot(1), "r3": _one_hot(3), "zz-other": _one_hot(7)})

    spy = CountingEmbedder()
    emb, stats = dom.embed_records(ids, texts, "minilm", cache=cache, embed_fn=spy)
    assert stats == {"cached": 2, "embedded": 4}
    assert spy.texts == [texts[k] for k in (0, 2, 4, 5)]  # only the missing ones, in order
    assert emb.shape == (6, DIM)
    np.testing.assert_allclose(emb[1], _one_hot(1))
    np.testing.assert_allclose(emb[3], _one_hot(3))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # Real MiniLM vectors: two news sentences are closer to each other than to code.
    assert emb[0] @ emb[2] > emb[0] @ emb[5]

    # No cache: every text is embedded, to the same vectors as in the cached run.
    spy2 = CountingEmbedder()
    full, stats2 = dom.embed_records(ids[:2], texts[:2], "minilm", cache=tmp_path / "absent.parquet", embed_fn=spy2)
    assert stats2 == {"cached": 0, "embedded": 2} and len(spy2.texts) == 2
    np.testing.assert_allclose(full[0], emb[0], atol=1e-5)
    assert full[0] @ full[1] > 0.99  # the same sentence (plus a space) embeds to the same direction


def test_bad_cache_and_bad_embedder_are_clear_errors(tmp_path):
    bad = tmp_path / "embeddings.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": [[0.1, 0.2]]}), bad)
    with pytest.raises(ValueError, match="fixed_size_list"):
        dom.embed_records(["a"], ["text"], "minilm", cache=bad)
    with pytest.raises(ValueError, match="tfidf or minilm"):
        dom.embed_records(["a"], ["text"], "word2vec")


def test_search_prepare_with_minilm_uses_cached_vectors(toy):
    """The search's prepare step on the toy pool: web records cached by dedup are not re-embedded."""
    from pipelines.core.shards import read_all
    from pipelines.mixture_search import search

    web = read_all(toy.path("data/select"), ["id", "source"]).to_pandas()
    web_ids = sorted(web[web.source == "web"].id)
    rng = np.random.default_rng(0)
    keep = [i for k, i in enumerate(web_ids) if k % 6]  # every 6th web record is left to embed
    cached = {i: (v / np.linalg.norm(v)).astype(np.float32) for i, v in zip(keep, rng.normal(size=(len(keep), DIM)))}
    from pipelines.dedup import semantic

    path = toy.path("data/dedup/embeddings.parquet")
    if hasattr(semantic, "write_embeddings"):  # the dedup stage's own writer: the layout it really produces
        path.parent.mkdir(parents=True, exist_ok=True)
        semantic.write_embeddings(path, list(cached), np.stack(list(cached.values())))
    else:
        _write_cache(path, cached)
    toy.update("mixture.embedder", "minilm")
    info = search.prepare(toy.params())
    assert info["embeddings"] == {"cached": len(cached), "embedded": len(web_ids) - len(cached)}
    assert info["domains"][:2] == ["cluster_0", "cluster_1"]
    prepared = json.loads((search.work_dir() / "prepared.json").read_text())
    assert prepared["embeddings"]["cached"] == len(cached)


