"""DSIR and the seeded samplers on real text: importance resampling towards one real source picks
that source out of a mixed pool, the KL reduction is positive, samples are reproducible per seed
and independent of input order, and the temperature interpolates between top-k and uniform."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipelines import stages
from pipelines.core.schema import domain_of, make_record_id
from pipelines.core.shards import read_all, write_shard
from pipelines.select import dsir
from pipelines.select import stage as select_stage
from pipelines.select.sampling import gumbel_top_k, kth_largest, quality_logits, sort_keys
from tests.fixtures.real_text import select_sources


@pytest.fixture(scope="module")
def sources() -> dict[str, list[str]]:
    return select_sources()


def _select_dsir(target: list[str], pool: list[str], ids: list[str], k: int, seed: int):
    t, r = dsir.bucket_counts(target), dsir.bucket_counts(pool)
    model = dsir.ImportanceModel.fit(t, r)
    mask = gumbel_top_k(model.log_weights(pool), ids, k, seed)
    chosen = [x for x, m in zip(pool, mask) if m]
    return mask, dsir.kl_reduction(t, r, dsir.bucket_counts(chosen))


@pytest.mark.parametrize("target_source", ["news", "math"])
def test_dsir_selects_the_target_source_from_a_mixed_pool(sources, target_source):
    # Target: the first half of one real source; pool: the other half of it mixed with the others.
    target = sources[target_source][:120]
    pool, labels = [], []
    for name, texts in sources.items():
        held = texts[120:] if name == target_source else texts[:120]
        pool += held
        labels += [name] * len(held)
    ids = [f"{lab}#{i}" for i, lab in enumerate(labels)]
    k = labels.count(target_source)
    mask, kl = _select_dsir(target, pool, ids, k, seed=1)
    picked = np.asarray(labels)[mask]
    share = float((picked == target_source).mean())
    print(f"{target_source}: share of target source in the selection {share:.2f}, {kl}")
    assert mask.sum() == k
    assert share > 0.7  # a random sample of k would hold 1/4 of it
    assert kl["kl_reduction"] > 0 and kl["kl_target_selected"] < kl["kl_target_raw"]


def test_kl_reduction_is_zero_for_the_pool_itself_and_negative_away_from_target(sources):
    t, r = dsir.bucket_counts(sources["news"][:100]), dsir.bucket_counts(sources["news"][100:] + sources["math"])
    assert dsir.kl_reduction(t, r, r)["kl_reduction"] == pytest.approx(0.0, abs=1e-12)
    assert dsir.kl_reduction(t, r, dsir.bucket_counts(sources["math"]))["kl_reduction"] < 0


def test_gumbel_top_k_is_deterministic_per_seed_and_order_free():
    rng = np.random.default_rng(0)
    logw = rng.normal(size=500)
    ids = [f"r{i}" for i in range(500)]
    a = gumbel_top_k(logw, ids, 100, seed=7)
    assert a.sum() == 100
    assert np.array_equal(a, gumbel_top_k(logw, ids, 100, seed=7))
    perm = rng.permutation(500)
    b = gumbel_top_k(logw[perm], [ids[i] for i in perm], 100, seed=7)
    assert set(np.asarray(ids)[a]) == set(np.asarray(ids)[perm][b])  # same records whatever the order
    c = gumbel_top_k(logw, ids, 100, seed=8)
    assert not np.array_equal(a, c)  # another seed, another sample


def test_gumbel_top_k_samples_in_proportion_to_weights():
    # Inclusion frequency over seeds follows the weights: heavy records are picked far more often.
    ids = [f"r{i}" for i in range(40)]
    logw = np.log(np.r_[np.full(20, 9.0), np.full(20, 1.0)])
    hits = np.mean([gumbel_top_k(logw, ids, 5, seed=s) for s in range(300)], axis=0)
    heavy, light = hits[:20].mean(), hits[20:].mean()
    assert heavy > 4 * light and abs(hits.sum() - 5) < 1e-9


def test_temperature_extremes():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.01, 0.99, size=400)
    ids = [f"d{i}" for i in range(400)]
    k = 80
    topk = set(np.argsort(-scores)[:k])
    cold = gumbel_top_k(quality_logits(scores, 1e-4), ids, k, seed=3)
    assert set(np.flatnonzero(cold)) == topk  # T -> 0: exactly the top-k
    # T -> inf: uniform, so the mean score of the sample approaches the pool's, over many seeds.
    hot_means = [scores[gumbel_top_k(quality_logits(scores, 1e4), ids, k, seed=s)].mean() for s in range(50)]
    warm_means = [scores[gumbel_top_k(quality_logits(scores, 1.0), ids, k, seed=s)].mean() for s in range(50)]
    top_mean = scores[list(topk)].mean()
    assert abs(np.mean(hot_means) - scores.mean()) < 0.02
    assert scores.mean() < np.mean(warm_means) < top_mean  # in between at T = 1
    with pytest.raises(ValueError, match="temperature"):
        quality_logits(scores, 0.0)


def test_kth_largest_and_key_validation():
    keys = np.array([3.0, 1.0, 2.0, 5.0])
    assert kth_largest(keys, 2) == 3.0 and kth_largest(keys, 0) == float("inf") and kth_largest(keys, 9) == 1.0
    with pytest.raises(ValueError, match="ids"):
        sort_keys(np.zeros(3), ["a", "b"], 1, "x")


def _record(source, text, i):
    url = f"http://example.org/{source}/{i}" if source == "web" else None
    return {"id": make_record_id(source, f"{source}#{i}"), "url": url, "domain": domain_of(url), "source": source,
            "lang": None, "lang_score": None, "text": text, "source_file": "test", "source_offset": i}


@pytest.mark.parametrize("method", ["dsir", "quality_temperature"])
def test_select_stage_methods_log_kl_reduction(workspace, sources, method):
    # Web pool: raw web plus unseen news lines posing as web; DSIR's target: the curated news records.
    records = ([_record("news", t, i) for i, t in enumerate(sources["news"][:120])]
               + [_record("wikipedia", t, i) for i, t in enumerate(sources["wikipedia"][:60])]
               + [_record("newsweb", t, i) for i, t in enumerate(sources["news"][120:240])]
               + [_record("web", t, i) for i, t in enumerate(sources["web"][:120])])
    for s in range(2):
        write_shard(workspace.path(f"data/dedup/part-{s:05d}.parquet"), pa.Table.from_pylist(records[s::2]))
    workspace.update("select.method", method)
    workspace.update("select.web_keep_fraction", 0.5)
    params = workspace.update("select.dsir", {"target_sources": ["news"], "buckets": 4096})
    summary = stages.run("select", params)
    out = read_all(workspace.path("data/select"))
    removed = read_all(workspace.path("data/select/removed"))
    kept = out.column("source").to_pylist()
    assert sum(1 for s in kept if s in ("web", "newsweb")) == summary["web_kept"] == 120
    assert set(removed.column("drop_reason").to_pylist()) == {"not_sampled"}
    metrics = json.loads(workspace.path("metrics/details/select.json").read_text())
    assert metrics["method"] == method and metrics["kl_reduction"] == summary["selection"]["kl_reduction"]
    if method == "dsir":
        assert kept.count("newsweb") > 0.7 * 120
        assert metrics["kl_reduction"] > 0
        # The gate passes above the floor and names the KL reduction when the floor is not met.
        from pipelines.checks.gate import GateFailed, run_gate

        workspace.update("checks.select.min_records", 10)
        assert run_gate("select", workspace.update("checks.select.min_kl_reduction", 0.0))["success"]
        with pytest.raises(GateFailed, match="kl_reduction"):
            run_gate("select", workspace.update("checks.select.min_kl_reduction", metrics["kl_reduction"] + 1))
        params = workspace.params()
    assert stages.run("select", params) == summary  # seeded: the same sample again
