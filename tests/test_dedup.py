"""Dedup stage on real text: exact copies, controlled near-duplicates against exact Jaccard, shard-invariance."""
from __future__ import annotations

import json
import random
import shutil
from itertools import combinations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.core.schema import make_record_id
from pipelines.core.shards import read_all, read_shard, write_shard
from pipelines.dedup.clusters import EXACT_DUP, NEAR_DUP
from pipelines.dedup.minhash import MinHasher, mulmod61
from pipelines.dedup.normalize import normalize_text, words
from pipelines.stages import runner
run = runner("dedup")

from tests.fixtures.dedup_inputs import (NEGATIVE_LEVEL, cluster_of, dedup_record, jaccard, near_dup_set,  # noqa: F401 (fixture)
                                         shingle_set, write_filter_output)
from tests.fixtures.outputs import snapshot
from tests.fixtures.real_text import news_articles, web_articles


# ---------------------------------------------------------------- units

def test_mulmod61_is_exact():
    rng = random.Random(3)
    p = (1 << 61) - 1
    a = [rng.randrange(p) for _ in range(500)] + [p - 1, 0, 1]
    x = [rng.randrange(p) for _ in range(500)] + [p - 1, p - 1, p - 1]
    got = mulmod61(np.array(a, np.uint64), np.array(x, np.uint64))
    assert [int(v) for v in got] == [ai * xi % p for ai, xi in zip(a, x)]


def test_normalisation_and_short_documents():
    assert normalize_text("  Hello,\tWORLD!\n ﬁne  ") == "hello world fine"  # NFKC folds the ligature
    assert normalize_text("Hello, World", lowercase=False, strip_punctuation=False) == "Hello, World"
    hasher = MinHasher(ngram=5, bands=4, rows=2, seed=1)
    sig = hasher.signatures([["to", "be"], ["to", "be"], ["not", "to", "be"], []])
    assert (sig[0] == sig[1]).all()  # fewer words than ngram: the whole text is one shingle
    assert not (sig[0] == sig[2]).any()
    with pytest.raises(ValueError, match="dedup.minhash.rows"):
        MinHasher(rows=0)


def test_vectorised_word_hashing_tokenises_exactly_like_words():
    """The stage hashes code points with numpy; its words must be normalize.words()' words, hash-equal iff equal."""
    from pipelines.dedup.minhash import text_word_hashes

    rng = random.Random(5)
    alphabet = "abcAB é_-,.!?\u00a0\u2019\u2014\ufb01\uff11\u216b\u00b2\u00df \u0130\t\n\u65e5\u672c\U0001F600\x00\ud800"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(400)]
    texts += news_articles(2) + ["", "   ", "word"]
    hashes, counts = text_word_hashes(texts)
    expected = [words(t) for t in texts]
    assert counts.tolist() == [len(w) for w in expected]
    flat = [w for ws in expected for w in ws]
    first = {}
    for w, h in zip(flat, hashes.tolist()):
        assert first.setdefault(w, h) == h  # the same word always hashes alike
    assert len(set(first.values())) == len(first)  # distinct words, distinct hashes
    # Blocks (BLOCK_CHARS) do not change anything.
    import pipelines.dedup.minhash as minhash

    small = text_word_hashes.__globals__["BLOCK_CHARS"]
    try:
        minhash.BLOCK_CHARS = 50
        h2, c2 = text_word_hashes(texts)
    finally:
        minhash.BLOCK_CHARS = small
    assert (h2 == hashes).all() and (c2 == counts).all()


# ---------------------------------------------------------------- stage

def test_exact_copies_with_case_space_punctuation_changes_are_dropped(workspace):
    docs = news_articles(3) + web_articles(2)
    records = []
    for i, text in enumerate(docs):
        tokens = text.split()
        copies = [
            text,
            text.upper(),
            "\n\n  " + "   ".join(tokens) + " \t",
            " ".join(t + ("," if j % 7 == 3 else "") for j, t in enumerate(tokens)).replace(".", " ").replace("\u0020", "\u00a0", 3),
        ]
        records += [dedup_record("news" if i < 3 else "web", f"doc{i}-copy{c}", t) for c, t in enumerate(copies)]
        # One substituted word is not an exact copy (it is a near duplicate).
        records.append(dedup_record("web", f"doc{i}-edited", " ".join(tokens[:50] + ["zebra"] + tokens[51:])))
    write_filter_output(workspace, records, 2)
    summary = run(workspace.params())

    removed = read_all(workspace.path("data", "dedup", "removed")).to_pylist()
    by_id = {r["id"]: r for r in removed}
    for i in range(len(docs)):
        group = [make_record_id("news" if i < 3 else "web", f"doc{i}-copy{c}") for c in range(4)]
        keeper = min(group)
        for rid in group:
            if rid != keeper:
                assert by_id[rid]["drop_reason"] == EXACT_DUP
                assert by_id[rid]["dup_of"] == min(group + [make_record_id("web", f"doc{i}-edited")])
        edited = make_record_id("web", f"doc{i}-edited")
        if edited in by_id:
            assert by_id[edited]["drop_reason"] == NEAR_DUP
    assert summary[EXACT_DUP] == 3 * len(docs)
    assert summary[NEAR_DUP] == len(docs)  # the edited copy (or the exact group's smaller representative)
    assert summary["clusters"] == len(docs)
    assert summary["records_out"] == len(docs)
    assert all(json.loads(r["drop_detail"])["dup_of"] == r["dup_of"] for r in removed)

    # Exact dedup alone: the one-word edits survive, the verbatim copies still go.
    exact_only = run(workspace.update("dedup.minhash.enabled", False))
    assert (exact_only[EXACT_DUP], exact_only[NEAR_DUP], exact_only["records_out"]) == (3 * len(docs), 0, 2 * len(docs))


def _pair_scores(records: list[dict], cluster: dict[str, str]) -> dict:
    shingles = {r["id"]: shingle_set(r["text"]) for r in records}
    truth, predicted, far_merged, hard, hard_merged = set(), set(), [], 0, []
    for a, b in combinations(sorted(shingles), 2):
        j = jaccard(shingles[a], shingles[b])
        same = cluster[a] == cluster[b]
        if j >= 0.8:
            truth.add((a, b))
        if same:
            predicted.add((a, b))
        if j <= NEGATIVE_LEVEL and same:
            far_merged.append((a, b, j))
        if 0.7 <= j < 0.8:
            hard += 1
            if same:
                hard_merged.append((a, b, j))
    return {"truth": truth, "predicted": predicted, "far_merged": far_merged, "hard": hard, "hard_merged": hard_merged,
            "precision": len(truth & predicted) / max(len(predicted), 1), "recall": len(truth & predicted) / len(truth)}


def test_near_duplicates_against_exact_jaccard(workspace, near_dup_set):
    write_filter_output(workspace, near_dup_set, 3)
    params = workspace.params()
    assert params["dedup"]["minhash"]["verify_threshold"] == 0.8
    summary = run(params)
    cluster = cluster_of(workspace)
    assert len(cluster) == len(near_dup_set)
    score = _pair_scores(near_dup_set, cluster)
    assert len(score["truth"]) >= 30  # the set really contains near duplicates
    assert score["hard"] >= 15  # and hard negatives (J in [0.7, 0.8))
    assert score["precision"] >= 0.95, (score["precision"], len(score["predicted"]))
    assert score["recall"] >= 0.90, (score["recall"], len(score["truth"]))
    assert not score["hard_merged"], score["hard_merged"]  # below the verification threshold: never merged
    assert not score["far_merged"], score["far_merged"]  # J <= 0.3 (distant edits, Folio vs modern spelling) never merged
    assert summary["near_dup"] + summary["exact_dup"] == len(near_dup_set) - len(set(cluster.values()))
    print(f"precision={score['precision']:.3f} recall={score['recall']:.3f} truth_pairs={len(score['truth'])} "
          f"hard_pairs={score['hard']} summary={summary}")

    # Without verification the LSH (14x8: P(J=0.75) ~ 0.77) merges hard pairs: the hard cases really test it.
    run(workspace.update("dedup.minhash.verify_threshold", None))
    loose = _pair_scores(near_dup_set, cluster_of(workspace))
    assert loose["hard_merged"] and loose["precision"] < score["precision"]


def test_url_dedup_normalises_urls_and_keeps_by_policy(workspace):
    docs = news_articles(4)
    variants = ["https://www.Example.org/a/b/?y=2&x=1#top", "http://example.org/a/b?x=1&y=2", "https://example.org:443/a/b/"]
    records = [{**dedup_record("news", f"u{i}", docs[i]), "url": u} for i, u in enumerate(variants)]
    records.append({**dedup_record("news", "other", docs[3]), "url": "https://example.org/a/c"})
    write_filter_output(workspace, records, 2)
    assert run(workspace.params())["duplicate_url"] == 0  # off by default: different texts all stay
    summary = run(workspace.update("dedup.exact.url", True))
    removed = read_all(workspace.path("data", "dedup", "removed")).to_pylist()
    same = sorted(r["id"] for r in records[:2])  # u2 has no query string: another page
    assert {r["id"]: (r["drop_reason"], r["dup_of"]) for r in removed} == {same[1]: ("duplicate_url", same[0])}
    assert summary["duplicate_url"] == 1 and summary["records_out"] == 3
    with pytest.raises(ValueError, match="dedup.exact.url"):
        run(workspace.update("dedup.exact.url", "yes"))


def test_keep_policy_is_independent_of_sharding_and_outputs_balance(workspace, near_dup_set, monkeypatch):
    records = list(near_dup_set)
    write_filter_output(workspace, records, 1)
    one = run(workspace.params())
    one_clusters = cluster_of(workspace)

    random.Random(1).shuffle(records)  # other order, other shards: the same decisions
    write_filter_output(workspace, records, 3)
    three = run(workspace.params())
    assert cluster_of(workspace) == one_clusters
    assert {k: v for k, v in three.items() if k != "shards"} == {k: v for k, v in one.items() if k != "shards"}
    for group in set(one_clusters.values()):
        members = [i for i, k in one_clusters.items() if k == group]
        assert group == min(members)  # smallest id kept

    out = workspace.path("data", "dedup")
    kept = read_all(out)
    removed = read_all(out / "removed")
    stats = read_shard(out / "_stats.parquet").to_pandas()
    assert len(stats) == 3 and not list(out.glob("part-00003.parquet"))
    assert (stats.records_in == stats.records_out + stats.records_dropped).all()
    assert stats.records_in.sum() == len(records) == kept.num_rows + removed.num_rows
    assert stats.drop__exact_dup.sum() + stats.drop__near_dup.sum() == removed.num_rows
    assert set(removed.column("drop_reason").to_pylist()) <= {EXACT_DUP, NEAR_DUP}
    kept_ids = set(kept.column("id").to_pylist())
    dup_of = removed.column("dup_of").to_pylist()
    assert None not in dup_of and set(dup_of) <= kept_ids
    heads = {i for i, c in zip(kept.column("id").to_pylist(), kept.column("dup_cluster").to_pylist()) if c is not None}
    assert heads == set(dup_of)
    assert kept.column("dup_of").null_count == kept.num_rows
    assert stats.extra__clusters.sum() == three["clusters"] == len(heads)
    assert {"url", "source", "text"} <= set(removed.column_names)

    # Byte-identical re-run from scratch (other worker count), and a resumed run that changes nothing.
    before = snapshot(out)
    shutil.rmtree(out)
    monkeypatch.setenv("PIPELINES_WORKERS", "1")
    assert run(workspace.params()) == three
    assert snapshot(out) == before
    assert run(workspace.params()) == three
    assert snapshot(out) == before
    # Changing a decision-relevant param redoes every shard under the new params hash.
    old_hash = json.loads((out / "_manifest.json").read_text())["params_hash"]
    run(workspace.update("dedup.minhash.seed", 2))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["params_hash"] != old_hash
    assert {s["params_hash"] for s in manifest["shards"].values()} == {manifest["params_hash"]}


def test_bad_input_and_params(workspace):
    params = workspace.params()
    with pytest.raises(FileNotFoundError, match="data/filter"):
        run(params)
    docs = news_articles(2)
    write_filter_output(workspace, [dedup_record("news", "a", docs[0]), dedup_record("news", "a", docs[1])], 2)
    with pytest.raises(ValueError, match="occurs more than once"):
        run(params)
    with pytest.raises(ValueError, match="dedup.keep"):
        run(workspace.update("dedup.keep", "longest"))
    workspace.update("dedup.keep", "smallest_id")
    with pytest.raises(ValueError, match="dedup.minhash.bands"):
        run(workspace.update("dedup.minhash.bands", 0))


def test_empty_shards_and_an_empty_input_are_deduplicated_without_error(workspace):
    """A shard with no records (every page filtered out) ranks, hashes and finalizes like any other."""
    docs = news_articles(3)
    records = [dedup_record("news", str(i), d) for i, d in enumerate(docs)] + [dedup_record("news", "copy", docs[0])]
    write_filter_output(workspace, records, 1)
    write_shard(workspace.path("data", "filter", "part-zz-empty.parquet"), pa.Table.from_pylist(records).slice(0, 0))
    summary = run(workspace.params())
    assert (summary["records_in"], summary["records_out"], summary[EXACT_DUP]) == (4, 3, 1)
    write_filter_output(workspace, [], 0)
    write_shard(workspace.path("data", "filter", "part-zz-empty.parquet"), pa.Table.from_pylist(records).slice(0, 0))
    summary = run(workspace.params())
    assert (summary["records_in"], summary["records_out"]) == (0, 0)
