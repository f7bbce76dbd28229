"""Semantic dedup building block: real MiniLM embeddings (offline package), k-means, threshold on cosine."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.hashing import sha256_file
from pipelines.dedup.semantic import embed, semantic_duplicates
from tests.fixtures.dedup_inputs import dedup_record, write_filter_output
from tests.fixtures.real_text import news_articles, play_scenes


def test_paraphrase_level_duplicates_are_found_and_distinct_texts_kept():
    news = [" ".join(t.split()[:120]) for t in news_articles(6)]  # short enough that truncation (256 tokens) keeps all of it
    modern = play_scenes("macbeth", False, max_words=150)[:3]
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


# ---------------------------------------------------------------- wired into the stage

def _swap_pairs(text: str) -> str:
    """A paraphrase-like copy: every 6th word swapped with the next. Same meaning to MiniLM, J ~ 0 for 5-gram MinHash."""
    w = text.split()
    for i in range(0, len(w) - 1, 6):
        w[i], w[i + 1] = w[i + 1], w[i]
    return " ".join(w)


def _semantic_corpus() -> tuple[list[dict], dict[str, str]]:
    """40 records: 31 distinct real texts (news, Macbeth) plus 9 paraphrase-like copies of news texts."""
    news = [" ".join(t.split()[:80]) for t in news_articles(22)]  # short: embedding on CPU is the test's cost
    records = [dedup_record("news", f"n{i:02d}", t) for i, t in enumerate(news)]
    records += [dedup_record("books", f"m{i:02d}", t) for i, t in enumerate(play_scenes("macbeth", False, max_words=80)[:9])]
    pairs = {}
    for i, text in enumerate(news[:9]):
        para = dedup_record("news", f"p{i:02d}", _swap_pairs(text))
        records.append(para)
        pairs[para["id"]] = records[i]["id"]
    return records, pairs


def test_stage_semantic_dedup_drops_paraphrases_and_caches_embeddings(workspace):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.checks.gate import run_gate
    from pipelines.core.shards import list_shards, read_all
    from pipelines.dedup.semantic import SEMANTIC_DUP
    from pipelines.stages import runner
    run = runner("dedup")

    records, pairs = _semantic_corpus()
    assert len(records) == 40
    workspace.update("checks.data_docs", False)
    workspace.update("dedup.decontam.enabled", False)
    workspace.update("dedup.keep", ["id asc"])
    workspace.update("dedup.semantic.clusters", 4)
    workspace.update("dedup.semantic.max_tokens", 128)
    params = workspace.update("dedup.semantic.enabled", True)
    params = workspace.update("dedup.semantic.threshold", 0.9)
    write_filter_output(workspace, records, 3)
    summary = run(params)

    out = workspace.path("data", "dedup")
    removed = read_all(out / "removed").to_pylist()
    sem = {r["id"]: r for r in removed if r["drop_reason"] == SEMANTIC_DUP}
    # Each reordered copy (MinHash sees different 5-grams) goes, pointing at its original; nothing else goes.
    dropped = {max(p, o): min(p, o) for p, o in pairs.items()}  # keep = smallest id
    assert {i: r["dup_of"] for i, r in sem.items()} == dropped
    assert all(json.loads(r["drop_detail"])["dup_of"] == r["dup_of"] for r in sem.values())
    assert summary[SEMANTIC_DUP] == len(pairs) and summary["near_dup"] == summary["exact_dup"] == 0
    stats = pq.read_table(out / "_stats.parquet").to_pandas()
    assert stats[f"drop__{SEMANTIC_DUP}"].sum() == len(pairs)
    kept = read_all(out)
    kept_ids = kept.column("id").to_pylist()
    heads = {i for i, c in zip(kept_ids, kept.column("dup_cluster").to_pylist()) if c is not None}
    assert heads == set(dropped.values())

    # The embedding cache: the contract the mixture stage reads.
    path = out / "embeddings.parquet"
    table = pq.read_table(path)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.schema.metadata == {b"model": b"all-MiniLM-L6-v2"}
    assert table.column("id").to_pylist() == sorted(kept_ids)
    emb = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(-1, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert path not in list_shards(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["artifacts"]["embeddings.parquet"]["sha256"] == sha256_file(path)
    assert run_gate("dedup", params)["success"]

    # Other shard count and record order: byte-identical decisions and cache.
    cache = path.read_bytes()
    import random

    random.Random(2).shuffle(records)
    write_filter_output(workspace, records, 1)
    assert run(params) == {**summary, "shards": 1}
    assert path.read_bytes() == cache

    # A tampered cache fails the gate; turning semantic dedup off removes the cache.
    path.write_bytes(cache[:-8] + b"\0" * 8)
    from pipelines.checks.gate import GateFailed

    with pytest.raises(GateFailed, match="embeddings.parquet"):
        run_gate("dedup", params)
    off = run(workspace.update("dedup.semantic.enabled", False))
    assert off[SEMANTIC_DUP] == 0 and off["records_out"] == 40 and not path.exists()
    assert "artifacts" not in json.loads((out / "_manifest.json").read_text())
