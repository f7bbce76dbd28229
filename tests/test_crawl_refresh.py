"""Which crawl a refresh adds: the bucket's crawl listing (a real moto S3 server), the newest crawl published by
the run's date that the corpus lacks, one per run in date order on a catch-up, and ingest reading every crawl held."""
from __future__ import annotations

import datetime as dt
import gzip
from types import SimpleNamespace

import pytest
import yaml

from pipelines.ingest.common_crawl import available_crawls, crawl_week, held_crawls, pick_crawl
from pipelines.ingest.stage import input_shard_name, plan_inputs
from pipelines.orchestration.run_params import FormError, apply_form, form_schema, run_date

CRAWLS = ["CC-MAIN-2024-10", "CC-MAIN-2024-18", "CC-MAIN-2024-22", "CC-MAIN-2024-26"]


@pytest.fixture
def cc_bucket(workspace, moto_s3, monkeypatch):
    """A commoncrawl bucket with four crawls (each listing one WARC file) and some other crawl-data folders."""
    moto_s3.setenv(monkeypatch)
    s3 = moto_s3.empty_bucket("commoncrawl")
    warc = workspace.path("samples/warc/dolma_sample-0000.warc.gz").read_bytes()
    for crawl in CRAWLS:
        key = f"crawl-data/{crawl}/segments/1715971057494.65/warc/{crawl}-00000.warc.gz"
        s3.put_object(Bucket="commoncrawl", Key=key, Body=warc)
        s3.put_object(Bucket="commoncrawl", Key=f"crawl-data/{crawl}/warc.paths.gz",
                      Body=gzip.compress((key + "\n").encode(), mtime=0))
    for other in ("crawl-data/CC-NEWS/x", "crawl-data/CC-MAIN-2024-99/x", "crawl-data/index.html", "robots.txt"):
        s3.put_object(Bucket="commoncrawl", Key=other, Body=b"x")
    return s3


def test_the_listing_names_the_crawls_oldest_first(cc_bucket):
    assert available_crawls("commoncrawl") == CRAWLS  # CC-NEWS, week 99 and loose files are not crawls


def test_pick_takes_the_newest_crawl_due_that_the_corpus_lacks():
    assert pick_crawl(CRAWLS, [], dt.date(2024, 12, 1)) == "CC-MAIN-2024-26"
    assert pick_crawl(CRAWLS, ["CC-MAIN-2024-26"], dt.date(2024, 12, 1)) == "CC-MAIN-2024-22"
    assert pick_crawl(CRAWLS, CRAWLS, dt.date(2024, 12, 1)) is None
    # A catch-up over past run dates takes the crawls one per run, in the order they were published.
    held, picked = ["CC-MAIN-2024-10"], []
    for day in (dt.date(2024, 5, 2), dt.date(2024, 6, 1), dt.date(2024, 7, 1), dt.date(2024, 7, 2)):
        crawl = pick_crawl(CRAWLS, held, day)
        if crawl:
            held.append(crawl)
            picked.append(crawl)
    assert picked == ["CC-MAIN-2024-18", "CC-MAIN-2024-22", "CC-MAIN-2024-26"]
    assert crawl_week("CC-MAIN-2024-22") == (2024, 22)


def test_a_refresh_run_appends_the_next_crawl_and_ingest_reads_every_crawl(workspace, cc_bucket):
    workspace.update("ingest.crawls", ["CC-MAIN-2024-10"])
    workspace.update("ingest.max_files", 1)
    # The run form: 'next' on a run dated in week 20 adds 2024-18 (2024-22 is not published yet).
    changed = apply_form(workspace.root, {"add_crawl": "next"}, as_of=dt.date(2024, 5, 15))
    assert changed == {"ingest.crawls": ["CC-MAIN-2024-10", "CC-MAIN-2024-18"]}
    # A scheduled run adds one only when the params say so; then the newest the corpus lacks.
    assert apply_form(workspace.root, {}, as_of=dt.date(2024, 12, 1), scheduled=True) == {}
    workspace.update("orchestration.refresh_adds_crawl", True)
    assert apply_form(workspace.root, {}, as_of=dt.date(2024, 12, 1), scheduled=True) == {
        "ingest.crawls": ["CC-MAIN-2024-10", "CC-MAIN-2024-18", "CC-MAIN-2024-26"]}
    assert apply_form(workspace.root, {}, as_of=dt.date(2024, 12, 1)) == {}  # a manual run without the field: none
    assert apply_form(workspace.root, {"add_crawl": "CC-MAIN-2024-18"}) == {}  # held already: nothing to add

    params = yaml.safe_load(workspace.path("params.yaml").read_text())
    assert held_crawls(params["ingest"]) == ["CC-MAIN-2024-10", "CC-MAIN-2024-18", "CC-MAIN-2024-26"]
    inputs = [f for f in plan_inputs({**params["ingest"], "curated": {}, "warc": [], "wet": []}, workspace.root)]
    assert [f.source for f in inputs] == ["cc-main-2024-10", "cc-main-2024-18", "cc-main-2024-26"]
    assert len({input_shard_name(f) for f in inputs}) == 3  # one shard per crawl file, named after it


def test_the_form_field_lists_candidates_and_refuses_unbounded_crawls(workspace):
    workspace.update("orchestration.crawl_candidates", CRAWLS[:2])
    field = form_schema(workspace.params(), workspace.root)["add_crawl"]
    assert field["enum"] == ["none", "next", *CRAWLS[:2]]  # no null choice: "none" reads "none (no crawl added)"
    assert field["values_display"]["none"].startswith("none")
    assert apply_form(workspace.root, {"add_crawl": "none"}) == {}
    workspace.update("ingest.max_files", 0)
    with pytest.raises(FormError, match="^Add a crawl .*File limit above 0"):
        apply_form(workspace.root, {"add_crawl": "CC-MAIN-2024-18"})
    with pytest.raises(FormError, match="^Add a crawl \\(refresh\\): 'CC-MAIN-2031-77' is not one of the choices"):
        apply_form(workspace.root, {"add_crawl": "CC-MAIN-2031-77", "max_files": 1})


def test_run_date_tells_scheduled_and_catch_up_runs_from_manual_ones():
    day = dt.datetime(2024, 6, 3, 3, 0, tzinfo=dt.timezone.utc)
    assert run_date(SimpleNamespace(run_type="scheduled", logical_date=day)) == (True, dt.date(2024, 6, 3))
    assert run_date(SimpleNamespace(run_type="backfill", logical_date=day)) == (True, dt.date(2024, 6, 3))
    assert run_date(SimpleNamespace(run_type="manual", logical_date=None)) == (False, None)
    assert run_date(None) == (False, None)
