"""ZIP-FIT (select.method: zipfit) on real text: the normalized compression distance is small for a text with
itself and large for unrelated text, target-like records align better than unrelated ones, and the stage keeps
the same share of web records as the quality top-k, accounts for every drop and is byte-identical on re-run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from pipelines import stages
from pipelines.core.schema import domain_of, make_record_id
from pipelines.core.shards import read_all, read_shard, write_shard
from pipelines.select import zipfit
from tests.fixtures.real_text import select_sources


@pytest.fixture(scope="module")
def sources() -> dict[str, list[str]]:
    return select_sources(news=240, wikipedia=60, math=60, web=120)


def test_ncd_of_a_text_with_itself_is_below_its_ncd_with_unrelated_text(sources):
    for x in sources["news"][:5] + sources["math"][:5]:
        same = zipfit.ncd(x, x)
        assert same < zipfit.ncd(x, sources["web"][0]) and same < zipfit.ncd(x, sources["wikipedia"][0])
        assert same < 0.5 < zipfit.ncd(x, sources["web"][0])
    assert zipfit.ncd("a", "b") == zipfit.ncd("a", "b")  # deterministic (gzip with mtime=0)


def test_target_like_records_outrank_unrelated_ones(sources):
    aligner = zipfit.Aligner(sources["news"][:32], max_chars=1000)
    news, maths = aligner.alignment(sources["news"][100:140]), aligner.alignment(sources["math"][:40])
    assert news.mean() > maths.mean()
    # A held-out news line outranks a grade-school maths problem, as a rule (AUC over all pairs).
    assert (news[:, None] > maths[None, :]).mean() > 0.9
    assert np.array_equal(aligner.alignment(sources["math"][:3]), aligner.alignment(sources["math"][:3]))
    with pytest.raises(ValueError, match="target"):
        zipfit.Aligner([])


def _record(source: str, text: str, i: int) -> dict:
    url = f"http://example.org/{source}/{i}" if source == "web" else None
    return {"id": make_record_id(source, f"{source}#{i}"), "url": url, "domain": domain_of(url), "source": source,
            "lang": None, "lang_score": None, "text": text, "source_file": "test", "source_offset": i}


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_select_stage_zipfit_keeps_the_topk_share_accounts_drops_and_reruns_identically(workspace, sources):
    # Web pool: raw web plus unseen news lines posing as web; the target: the curated news records.
    records = ([_record("news", t, i) for i, t in enumerate(sources["news"][:120])]
               + [_record("wikipedia", t, i) for i, t in enumerate(sources["wikipedia"])]
               + [_record("newsweb", t, i) for i, t in enumerate(sources["news"][120:240])]
               + [_record("web", t, i) for i, t in enumerate(sources["web"])])
    for s in range(2):
        write_shard(workspace.path(f"data/dedup/part-{s:05d}.parquet"), pa.Table.from_pylist(records[s::2]))
    workspace.update("select.web_keep_fraction", 0.5)
    workspace.update("select.dsir", {"target_sources": ["news"], "buckets": 4096})
    workspace.update("select.zipfit", {"target_docs": 16, "max_chars": 600})
    topk = stages.run("select", workspace.params())
    topk_web_kept = topk["web_kept"]
    shutil.rmtree(workspace.path("data/select"))

    params = workspace.update("select.method", "zipfit")
    summary = stages.run("select", params)
    out_dir = workspace.path("data/select")
    out, removed = read_all(out_dir), read_all(out_dir / "removed")
    kept = out.column("source").to_pylist()
    n_web = 240
    assert summary["web_records"] == topk["web_records"] == n_web
    assert summary["web_kept"] == topk_web_kept == sum(1 for s in kept if s in ("web", "newsweb")) == 120
    assert kept.count("newsweb") > 0.8 * 120  # the target-like web records are the ones kept
    assert kept.count("news") == 120 and kept.count("wikipedia") == len(sources["wikipedia"])  # never dropped
    # Every drop has a reason and its key; records in = kept + dropped, in the stats too.
    assert out.num_rows + removed.num_rows == len(records) == summary["records_in"]
    assert set(removed.column("drop_reason").to_pylist()) == {"low_alignment"}
    details = [json.loads(d) for d in removed.column("drop_detail").to_pylist()]
    assert all(d["method"] == "zipfit" and d["key"] < d["threshold"] == summary["threshold"] for d in details)
    stats = read_shard(out_dir / "_stats.parquet").to_pandas()
    assert (stats.records_in == stats.records_out + stats.records_dropped).all()
    assert stats.drop__low_alignment.sum() == removed.num_rows == n_web - 120
    # The target sample is an artifact of the run: bounded and truncated as configured.
    target = json.loads((out_dir / "zipfit_target.json").read_text())
    assert len(target["ids"]) == 16 and max(len(t) for t in target["texts"]) <= 600
    assert summary["selection"]["zipfit"] == {"target_docs": 16, "max_chars": 600, "target_records": 16}

    before = _files(out_dir)
    assert stages.run("select", params) == summary  # resume: skipped as complete
    shutil.rmtree(out_dir)
    assert stages.run("select", params) == summary
    assert _files(out_dir) == before  # byte-identical from scratch


def test_zipfit_params_are_validated(workspace, sources):
    write_shard(workspace.path("data/dedup/part-00000.parquet"),
                pa.Table.from_pylist([_record("web", t, i) for i, t in enumerate(sources["web"][:10])]
                                     + [_record("news", t, i) for i, t in enumerate(sources["news"][:10])]))
    workspace.update("select.method", "zipfit")
    with pytest.raises(ValueError, match="select.zipfit.target_docs"):
        stages.run("select", workspace.update("select.zipfit", {"target_docs": 0}))
    workspace.update("select.zipfit", {"target_docs": 4})
    with pytest.raises(ValueError, match="no records of select.dsir.target_sources"):
        stages.run("select", workspace.update("select.dsir", {"target_sources": ["books"]}))


def test_the_experiment_pairs_seeds_reports_every_source_and_keeps_the_other_sections(tmp_path):
    from pipelines.experiments import zipfit as exp

    rows = [{"seed": s, "arm": arm, "bpb": {"news": 2.0 + d + 0.01 * s, "web": 3.0 + 0.01 * s},
             "bpb_mean": 2.5 + d / 2 + 0.01 * s, "step": 300, "train_s": 1.0, "eval_s": 1.0}
            for s in (1, 2, 3) for arm, d in (("quality_topk", 0.0), ("zipfit", -0.2))]
    s = exp.summarize(rows)
    assert s["sources"] == ["news", "web"]
    assert s["paired_delta_zipfit_minus_topk"]["news"]["mean"] == pytest.approx(-0.2)
    assert s["paired_delta_zipfit_minus_topk"]["news"]["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert s["verdict"]["news"] == {"zipfit_better": "shown", "zipfit_worse": "not shown at this scale"}
    assert s["verdict"]["web"]["zipfit_better"] == "not shown at this scale"  # identical arms
    sel = {arm: {"web_records": 10, "web_kept": 8, "kl_reduction": 0.01} for arm in exp.ARMS}
    sel["zipfit"]["zipfit"] = {"target_docs": 64, "max_chars": 1000, "target_records": 64}
    sel["kept_web_overlap"] = {"both": 6, "only_quality_topk": 2, "only_zipfit": 2, "jaccard": 0.6}
    result = {"summary": s, "selection": sel, "target_sources": ["news"], "web_keep_fraction": 0.8, "steps": 300,
              "steps_note": "", "seeds": [1, 2, 3], "heldout_docs": 40, "wall_s": 60.0,
              "build_s": {a: {"select": 1.0} for a in exp.ARMS}}
    result["reading"] = exp.reading(result)
    text = exp.markdown(result)
    assert text.startswith("## ZIP-FIT\n") and "| news (target) |" in text and "| **mean** |" in text
    from pipelines.experiments._report import upsert_section

    report = tmp_path / "science.md"
    report.write_text("# Science\n\nintro\n\n## ZIP-FIT\n\nSTALE-SECTION\n\n## Step Law\n\nkept\n")
    upsert_section(report, exp.SECTION, text)
    new = report.read_text()
    assert "STALE-SECTION" not in new and new.startswith("# Science\n\nintro\n\n## ZIP-FIT\n") and new.endswith("## Step Law\n\nkept\n")
    upsert_section(report, exp.SECTION, text)
    assert report.read_text() == new
