"""Removal requests (filter.takedown): what an entry matches, the filter dropping every matching record
of any source with reason `takedown`, and check_filter failing when a taken-down record remains."""
from __future__ import annotations

import json

import pytest

from pipelines import stages
from pipelines.checks.gate import GateFailed, report_path, run_gate
from pipelines.core.shards import read_all
from pipelines.filter import fasttext_quality
from pipelines.filter.takedown import Takedown, normalize_url


def test_entries_match_what_they_name_and_nothing_else():
    t = Takedown.from_config({"urls": ["HTTPS://Example.com:443/a?b=1#frag"], "url_prefixes": ["http://site.org/private/"],
                              "domains": ["blog.net"], "ids": ["web-42"]})
    assert t.match(None, "https://example.com/a?b=1") == "url:https://example.com/a?b=1"
    assert t.match(None, "https://example.com/a?b=2") is None
    assert t.match(None, "http://site.org/private/x/y") == "url_prefix:http://site.org/private/"
    assert t.match(None, "http://site.org/privateer") is None and t.match(None, "http://site.org.evil/private/") is None
    assert t.match(None, "https://blog.net/post") == "domain:blog.net"
    assert t.match(None, "https://www.Blog.NET/post") == "domain:blog.net"  # subdomains, any case
    assert t.match(None, "https://notblog.net/") is None and t.match(None, "https://blog.net.example/") is None
    assert t.match("web-42", None) == "id:web-42" and t.match("web-43", "not a url") is None
    assert normalize_url("http://A.com") == "http://a.com/"
    assert not Takedown.from_config({}) and not Takedown.from_config(None)


def test_list_files_and_bad_params_are_checked(workspace):
    lists = workspace.path("takedown")
    lists.mkdir()
    (lists / "requests.txt").write_text("# legal 2026-11\nurl: https://a.example/x\ndomain: b.example\n"
                                        "https://c.example/bare-url\nid: web-1\nurl_prefix: https://d.example/p/\n")
    t = Takedown.from_config({"files": ["takedown/requests.txt"]})
    assert t.match(None, "https://sub.b.example/") == "domain:b.example"
    assert t.match(None, "https://c.example/bare-url") and t.match("web-1", None) and t.match(None, "https://d.example/p/q")
    (lists / "bad.txt").write_text("host: e.example\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        Takedown.from_config({"files": ["takedown/bad.txt"]})
    (workspace.path("elsewhere.txt")).write_text("domain: f.example\n")
    with pytest.raises(ValueError, match="must lie under takedown/"):
        Takedown.from_config({"files": ["elsewhere.txt"]})
    with pytest.raises(ValueError, match="unknown keys"):
        Takedown.from_config({"domain": ["x.example"]})
    with pytest.raises(ValueError, match="list of non-empty strings"):
        Takedown.from_config({"domains": "x.example"})


def test_filter_drops_taken_down_records_of_every_source_and_the_gate_proves_none_remains(workspace):
    params = workspace.params()
    params["ingest"].update(warc=["samples/warc/ia-2008_archive-org_aut-example.warc.gz"], wet=[], curated={
        "news": params["ingest"]["curated"]["news"], "books": params["ingest"]["curated"]["books"]})
    params["checks"]["data_docs"] = False
    params["checks"]["filter"].update(min_keep_rate=0.0, quality_keep_tolerance=None)  # a tiny, degenerate quality model
    workspace.set_params(params)
    stages.run("ingest", params)
    ingested = read_all(workspace.path("data/ingest")).to_pylist()
    web = [r for r in ingested if r["source"] == "web" and r["url"]]
    host = max({r["domain"] for r in web}, key=lambda d: sum(r["domain"] == d for r in web))
    book = next(r for r in ingested if r["source"] == "books")  # curated: exempt from the rules, not from takedowns
    params["filter"]["takedown"] = {"domains": [host.removeprefix("www.")], "ids": [book["id"]]}
    workspace.set_params(params)
    fasttext_quality.train(params)
    summary = stages.run("filter", params)

    kept = read_all(workspace.path("data/filter")).to_pylist()
    removed = [r for r in read_all(workspace.path("data/filter/removed")).to_pylist() if r["drop_reason"] == "takedown"]
    expected = {r["id"] for r in web if r["domain"] == host} | {book["id"]}
    assert {r["id"] for r in removed} == expected and len(expected) > 2
    assert not expected & {r["id"] for r in kept}
    entries = {json.loads(r["drop_detail"])["entry"] for r in removed}
    assert entries == {host.removeprefix("www."), book["id"]}
    assert summary["drops"]["takedown"] == len(expected)
    manifest = json.loads(workspace.path("data/filter/_manifest.json").read_text())
    assert manifest["takedown"]["domains"] == [host.removeprefix("www.")]
    # The quality threshold is taken over the web records the takedown list and the rules keep: none of the
    # taken-down ones is scored.
    everything = kept + read_all(workspace.path("data/filter/removed")).to_pylist()
    scored = {r["id"] for r in everything if r["quality_fasttext"] is not None}
    assert not scored & expected
    assert (manifest.get("quality") or {}).get("web_records", 0) == len(scored)

    report = run_gate("filter", params)
    (check,) = [c for c in report["checks"] if c["type"] == "no_taken_down_record_remains"]
    assert check["success"] and check["observed"]["records_checked"] == len(kept)

    # A request the filter has not applied yet: the gate fails and names the record.
    victim = kept[0]
    params["filter"]["takedown"]["ids"].append(victim["id"])
    with pytest.raises(GateFailed, match="no_taken_down_record_remains"):
        run_gate("filter", params)
    report = json.loads(report_path("filter", workspace.root).read_text())
    (check,) = [c for c in report["checks"] if c["type"] == "no_taken_down_record_remains"]
    assert check["observed"]["remaining"] == 1 and check["observed"]["examples"][0]["id"] == victim["id"]
