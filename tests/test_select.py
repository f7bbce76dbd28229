"""Select stage on real text: the in-stage classifier ranks curated text above raw web on held-out
documents, the global threshold keeps the requested share of web records, curated sources are never
dropped, drops are audited, re-runs are byte-identical, and a missing class fails clearly."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from pipelines import stages
from pipelines.core.schema import domain_of, make_record_id
from pipelines.core.shards import read_all, read_shard, write_shard
from pipelines.select import stage as select_stage
from pipelines.select.ngram_classifier import NgramQualityClassifier, train
from tests.fixtures.project import SHARED_DATA

TEXT = SHARED_DATA / "text"
WEB = TEXT / "web_cc" / "dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
WEB_SOURCE = "cc-main-2019-30"


def _record(source: str, text: str, key: str, url: str | None = None) -> dict:
    return {"id": make_record_id(source, key), "url": url, "domain": domain_of(url), "source": source,
            "lang": None, "lang_score": None, "text": text, "source_file": "test", "source_offset": 0}


def _lines(path, source, n, min_chars=200):
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if len(ln) >= min_chars and not ln.startswith("=")][:n]
    return [_record(source, ln, f"{path.name}#{i}") for i, ln in enumerate(lines)]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    """Real records by role: raw web (negatives), wikipedia + news (positives), math (kept, not trained)."""
    with gzip.open(WEB, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    web = [_record(WEB_SOURCE, r["text"], r["metadata"]["warc_url"], r["metadata"]["warc_url"])
           for r in rows if len(r["text"]) >= 200]
    with gzip.open(TEXT / "math" / "gsm8k_train_lines0001-3737.jsonl.gz", "rt", encoding="utf-8") as f:
        maths = [json.loads(line) for _, line in zip(range(40), f)]
    math = [_record("math", m["question"] + "\n" + m["answer"], f"gsm8k#{i}") for i, m in enumerate(maths)]
    return {
        "web": web,
        "positive": _lines(TEXT / "wikipedia" / "wikitext-2_valid.txt", "wikipedia", 300) + _lines(TEXT / "news" / "lee_background.cor", "news", 200),
        "math": math,
    }


def _half(rec) -> bool:
    return hashlib.sha1(rec["id"].encode()).digest()[0] % 2 == 0


def test_classifier_scores_curated_above_web_on_held_out_documents(corpus):
    from sklearn.metrics import roc_auc_score

    train_pos = [r["text"] for r in corpus["positive"] if _half(r)]
    train_neg = [r["text"] for r in corpus["web"] if _half(r)]
    test_pos = [r["text"] for r in corpus["positive"] if not _half(r)]
    test_neg = [r["text"] for r in corpus["web"] if not _half(r)]
    model = train(train_pos, train_neg, features=2**18, ngram_max=2, seed=1234)
    pos, neg = model.score(test_pos), model.score(test_neg)
    auc = roc_auc_score([1] * len(pos) + [0] * len(neg), np.concatenate([pos, neg]))
    print(f"held-out AUC {auc:.3f}, mean score curated {pos.mean():.3f} vs web {neg.mean():.3f}")
    assert auc > 0.8
    assert pos.mean() - neg.mean() > 0.2


def test_model_round_trips_through_npy_and_json(corpus, tmp_path):
    model = train([r["text"] for r in corpus["positive"][:50]], [r["text"] for r in corpus["web"][:50]],
                  features=4096, ngram_max=1, seed=1)
    model.save(tmp_path / "m")
    again = NgramQualityClassifier.load(tmp_path / "m")
    texts = [r["text"] for r in corpus["web"][50:60]]
    assert np.array_equal(model.score(texts), again.score(texts))


def _write_dedup(ws, records: list[dict], n_shards: int = 3) -> None:
    for s in range(n_shards):
        write_shard(ws.path(f"data/dedup/part-{s:05d}.parquet"), pa.Table.from_pylist(records[s::n_shards]))


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_select_keeps_requested_web_share_and_every_curated_record(workspace, corpus):
    records = corpus["web"] + corpus["positive"] + corpus["math"]
    _write_dedup(workspace, records)
    params = workspace.update("select.web_keep_fraction", 0.7)
    summary = stages.run("select", params)

    out = read_all(workspace.path("data/select"))
    removed = read_all(workspace.path("data/select/removed"))
    n_web = len(corpus["web"])
    assert out.num_rows + removed.num_rows == len(records) == summary["records_in"]
    # The achieved web keep rate is the requested one, to within the quantile's rounding.
    web_kept = sum(1 for s in out.column("source").to_pylist() if s == WEB_SOURCE)
    assert abs(web_kept - 0.7 * n_web) <= 2
    assert summary["web_kept"] == web_kept and summary["web_records"] == n_web
    # keep_sources are never dropped.
    curated = {r["id"] for r in corpus["positive"] + corpus["math"]}
    assert curated <= set(out.column("id").to_pylist())
    assert set(removed.column("source").to_pylist()) == {WEB_SOURCE}
    # Scores: float32 probability on every record; dropped ones are below the threshold, kept web ones not.
    assert out.schema.field("quality_score").type == pa.float32()
    threshold = summary["threshold"]
    details = [json.loads(d) for d in removed.column("drop_detail").to_pylist()]
    assert set(removed.column("drop_reason").to_pylist()) == {"low_quality"}
    assert all(d["score"] < threshold == d["threshold"] for d in details)
    out_web = out.filter(pa.compute.equal(out.column("source"), WEB_SOURCE))
    assert min(out_web.column("quality_score").to_pylist()) >= np.float32(threshold) - 1e-6
    # Stats and manifest record the cut.
    stats = read_shard(workspace.path("data/select/_stats.parquet")).to_pandas()
    assert (stats.records_in == stats.records_out + stats.records_dropped).all()
    assert stats.drop__low_quality.sum() == removed.num_rows == n_web - web_kept
    assert stats.extra__web_kept.sum() == web_kept
    manifest = json.loads(workspace.path("data/select/_manifest.json").read_text())
    assert manifest["quality"]["threshold"] == threshold
    assert manifest["quality"]["web_keep_rate"] == pytest.approx(web_kept / n_web)
    assert manifest["quality"]["train"] == {"positives": len(corpus["positive"]), "negatives": n_web}

    before = _files(workspace.path("data/select"))
    assert stages.run("select", params) == summary  # resume: same model and threshold, shards skipped
    assert _files(workspace.path("data/select")) == before
    shutil.rmtree(workspace.path("data/select"))
    stages.run("select", params)
    assert _files(workspace.path("data/select")) == before


def test_training_cap_samples_deterministically(workspace, corpus):
    _write_dedup(workspace, corpus["web"][:120] + corpus["positive"][:120], n_shards=2)
    params = workspace.update("select.max_train_per_class", 50)
    summary = stages.run("select", params)
    assert summary["train"] == {"positives": 50, "negatives": 50}
    model = json.loads(workspace.path("data/select/quality_model.json").read_text())
    # Another shard layout of the same records trains the same model (the sample is by id hash).
    shutil.rmtree(workspace.path("data/dedup"))
    shutil.rmtree(workspace.path("data/select"))
    _write_dedup(workspace, corpus["positive"][:120] + corpus["web"][:120], n_shards=3)
    stages.run("select", params)
    assert json.loads(workspace.path("data/select/quality_model.json").read_text()) == model


@pytest.mark.parametrize("missing", ["negative", "positive"])
def test_missing_training_class_fails_clearly(workspace, corpus, missing):
    records = corpus["positive"][:20] + corpus["math"][:5] if missing == "negative" else corpus["web"][:20] + corpus["math"][:5]
    _write_dedup(workspace, records, n_shards=1)
    param = "select.keep_sources" if missing == "negative" else "select.positive_sources"
    with pytest.raises(ValueError, match=f"no .*{'web records' if missing == 'negative' else 'positive_sources'}.*{param}"):
        stages.run("select", workspace.params())


def test_bad_params_fail_clearly(workspace, corpus):
    _write_dedup(workspace, corpus["web"][:10] + corpus["positive"][:10], n_shards=1)
    with pytest.raises(ValueError, match="web_keep_fraction"):
        stages.run("select", workspace.update("select.web_keep_fraction", 1.5))
    shutil.rmtree(workspace.path("data/dedup"))
    with pytest.raises(FileNotFoundError, match="data/dedup"):
        stages.run("select", workspace.update("select.web_keep_fraction", 0.5))


def test_a_refresh_scores_only_the_new_shards_against_the_same_bar(workspace, corpus):
    """The previous input plus a new shard, same settings: the classifier and threshold are kept, the earlier
    shards' outputs are not rewritten, only the new shard is scored; the whole-input figures add up."""
    records = corpus["web"] + corpus["positive"] + corpus["math"]
    first, later = [r for i, r in enumerate(records) if i % 4 != 3], records[3::4]
    _write_dedup(workspace, first)
    params = workspace.update("select.web_keep_fraction", 0.7)
    stages.run("select", params)
    out_dir = workspace.path("data/select")
    parent = json.loads((out_dir / "_manifest.json").read_text())
    old_outputs = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out_dir.rglob("part-*.parquet")}

    write_shard(workspace.path("data/dedup/part-00003.parquet"), pa.Table.from_pylist(later))
    summary = stages.run("select", params)
    manifest = json.loads((out_dir / "_manifest.json").read_text())
    assert manifest["refresh"] == {"scored_shards": 1, "kept_shards": 3}
    assert manifest["quality"]["threshold"] == parent["quality"]["threshold"] == summary["threshold"]
    assert manifest["artifacts"]["quality_model.npy"] == parent["artifacts"]["quality_model.npy"]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in old_outputs} == old_outputs  # untouched
    new_kept = read_shard(out_dir / "part-00003.parquet")
    new_removed = read_shard(out_dir / "removed/part-00003.parquet")
    assert new_kept.num_rows + new_removed.num_rows == len(later)
    threshold = np.float32(manifest["quality"]["threshold"])
    web_scores = [s for s, src in zip(new_kept.column("quality_score").to_pylist(), new_kept.column("source").to_pylist())
                  if src == WEB_SOURCE]
    assert web_scores and min(web_scores) >= threshold - 1e-6
    assert all(json.loads(d)["score"] < threshold + 1e-6 for d in new_removed.column("drop_detail").to_pylist())
    out = read_all(out_dir)
    n_web = len(corpus["web"])
    assert summary["web_records"] == n_web
    assert summary["web_kept"] == sum(1 for s in out.column("source").to_pylist() if s == WEB_SOURCE)
    counts = np.load(out_dir / "ngram_counts.npy")

    # A full build (retrain) of the same input: trains on all of it, so the bar may move, and rewrites every shard;
    # the target and raw n-gram counts (whole-input sums) are the refresh's.
    params = workspace.update("select.refresh", "retrain")
    stages.run("select", params)
    full = json.loads((out_dir / "_manifest.json").read_text())
    assert "refresh" not in full and full["quality"]["train"]["negatives"] == n_web
    assert np.array_equal(np.load(out_dir / "ngram_counts.npy")[:2], counts[:2])

    # A changed earlier shard is not a refresh either.
    params = workspace.update("select.refresh", "reuse")
    stages.run("select", params)  # settings changed back: a full build again, the new parent
    write_shard(workspace.path("data/dedup/part-00000.parquet"), pa.Table.from_pylist(first[0::3][:-1]))
    stages.run("select", params)
    assert "refresh" not in json.loads((out_dir / "_manifest.json").read_text())
