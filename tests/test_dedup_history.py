"""A refresh dedups only the new crawl: against the dedup index of what earlier runs kept, and within itself.

Crawl A (real news, web and play text) is version 1. Crawl B repeats some of A's pages verbatim (case and
spacing changed) and as near copies, repeats one of its own pages, and adds new ones; crawl C repeats B.
"""
from __future__ import annotations

import json
import logging
import shutil

import pyarrow as pa
import pytest

from pipelines.core.shards import read_all, write_shard
from pipelines.dedup.clusters import EXACT_DUP, NEAR_DUP
from pipelines.stages import runner
from pipelines.versions import lineage, page
from tests.fixtures.dedup_inputs import dedup_record, near_dup_set  # noqa: F401 (fixture)
from tests.fixtures.moto_s3 import moto_url, s3env  # noqa: F401 (fixtures)
from tests.fixtures.outputs import snapshot

run = runner("dedup")


@pytest.fixture(scope="module")
def crawls(near_dup_set) -> dict[str, list[dict]]:
    bases = [r for r in near_dup_set if "/base-" in r["url"]]
    nears = {r["url"].rsplit("-", 1)[1]: r for r in near_dup_set if "/near-" in r["url"]}
    fars = [r for r in near_dup_set if "/far-" in r["url"]]

    def rec(source, key, text, quality):
        return dict(dedup_record(source, key, text), quality_score=quality)

    a = [rec("cc-a", f"page-{i}", r["text"], 0.5) for i, r in enumerate(bases[:24])]
    b = [rec("cc-b", "copy-0", a[0]["text"].upper(), 0.99),  # ranks above its original by the keep policy
         rec("cc-b", "copy-1", "  " + a[1]["text"].replace(" ", "   "), 0.5),
         rec("cc-b", "near-2", nears[bases[2]["url"].rsplit("-", 1)[1]]["text"], 0.5),
         rec("cc-b", "own-0", bases[24]["text"], 0.5),
         rec("cc-b", "own-0-again", bases[24]["text"].lower(), 0.4),
         *[rec("cc-b", f"new-{i}", r["text"], 0.5) for i, r in enumerate(fars[:8])]]
    c = [rec("cc-c", "copy-of-b", b[3]["text"], 0.5), rec("cc-c", "new-0", bases[25]["text"], 0.5)]
    return {"a": a, "b": b, "c": c}


def write_crawl(ws, name: str, records: list[dict], shards: int = 2) -> None:
    out = ws.path("data", "filter")
    for s in range(shards):
        write_shard(out / f"part-cc-{name}-{s}.parquet", pa.Table.from_pylist(records[s::shards]))


def removed(ws) -> dict[str, dict]:
    table = read_all(ws.path("data", "dedup", "removed"))
    return {r["id"]: dict(r, detail=json.loads(r["drop_detail"])) for r in table.to_pylist()}


def kept_ids(ws) -> set[str]:
    return set(read_all(ws.path("data", "dedup"), columns=["id"]).column("id").to_pylist())


def manifest(ws) -> dict:
    return json.loads(ws.path("data", "dedup", "_manifest.json").read_text())


def test_global_refresh_drops_new_copies_of_earlier_records_and_keeps_old_shards(workspace, crawls, caplog, monkeypatch):
    a, b, c = crawls["a"], crawls["b"], crawls["c"]
    write_crawl(workspace, "a", a)
    run(workspace.params())
    v1 = manifest(workspace)
    assert v1["index"]["records"] == len(a) and "refresh" not in v1
    v1_files = snapshot(workspace.path("data", "dedup"))
    saved = workspace.path("v1-dedup")
    shutil.copytree(workspace.path("data", "dedup"), saved)

    write_crawl(workspace, "b", b)
    with caplog.at_level(logging.INFO, logger="pipelines"):
        summary = run(workspace.params())
    assert "refresh: 2 new shards deduplicated against the dedup index (24 records); 2 shards keep" in caplog.text
    assert "part-cc-a-0.parquet already complete, skipped" in caplog.text
    # The lookup is a probe: only the index entries sharing a key with a new record take part (a[0], a[1]
    # by exact text, and a[2] too by MinHash bands), not all 24.
    staged = json.loads(caplog.text.split("index probe: of 24 index entries, staged by key kind ")[1].splitlines()[0])
    assert staged["exact"] == 2 and 2 <= max(v for k, v in staged.items() if k.startswith("band_")) <= 3
    v2 = manifest(workspace)
    after = snapshot(workspace.path("data", "dedup"))
    for name in ("part-cc-a-0.parquet", "part-cc-a-1.parquet"):  # the old shards' bytes are untouched
        assert after[name] == v1_files[name]
    assert v2["refresh"] == {"parent_index": v1["index"]["fingerprint"], "kept_shards": 2}

    gone = removed(workspace)
    copy0, copy1, near2, again = (r["id"] for r in (b[0], b[1], b[2], b[4]))
    # The earlier record wins, even over a new copy the keep policy ranks higher (quality 0.99 > 0.5).
    assert gone[copy0]["drop_reason"] == EXACT_DUP and gone[copy0]["dup_of"] == a[0]["id"]
    assert gone[copy0]["detail"] == {"dup_of": a[0]["id"], "cluster_size": 2,
                                     "dup_of_index": v1["index"]["generation"]}
    assert gone[copy1]["drop_reason"] == EXACT_DUP and gone[copy1]["dup_of"] == a[1]["id"]
    assert gone[near2]["drop_reason"] == NEAR_DUP and gone[near2]["dup_of"] == a[2]["id"]
    assert gone[again]["drop_reason"] == EXACT_DUP and gone[again]["dup_of"] == b[3]["id"]
    assert "dup_of_index" not in gone[again]["detail"]  # a duplicate within the new crawl
    assert set(gone) == {copy0, copy1, near2, again}
    assert kept_ids(workspace) == {r["id"] for r in a + b} - set(gone)
    assert summary["records_in"] == len(a) + len(b) and summary["records_out"] == len(a) + len(b) - 4
    assert v2["index"]["records"] == len(a) + len(b) - 4
    # The index grew by a segment of the new records kept; version 1's segment is reused, not rewritten.
    assert v2["index"]["segments"][0] == v1["index"]["segments"][0]
    assert [seg["records"] for seg in v2["index"]["segments"]] == [len(a), len(b) - 4]
    for name in v1_files:
        if name.startswith("index/"):
            assert after[name] == v1_files[name]
    assert sorted(d.name for d in workspace.path("data", "dedup", "index").iterdir()) == sorted(
        {v1["index"]["generation"][:16], v2["index"]["generation"][:16]})

    # The same refresh again: nothing to do, same bytes.
    assert run(workspace.params()) == summary
    assert snapshot(workspace.path("data", "dedup")) == after

    # Same refresh from version 1 with one worker: the same bytes.
    shutil.rmtree(workspace.path("data", "dedup"))
    shutil.copytree(saved, workspace.path("data", "dedup"))
    monkeypatch.setenv("PIPELINES_WORKERS", "1")
    run(workspace.params())
    assert snapshot(workspace.path("data", "dedup")) == after

    # A second refresh: C's copy of a page B added loses to it, naming version 2's index.
    write_crawl(workspace, "c", c, shards=1)
    run(workspace.params())
    gone3 = removed(workspace)
    assert gone3[c[0]["id"]]["dup_of"] == b[3]["id"]
    assert gone3[c[0]["id"]]["detail"]["dup_of_index"] == v2["index"]["generation"]
    assert manifest(workspace)["index"]["records"] == len(a) + len(b) - 4 + 1

    # A full build of A + B ranks every record by the keep policy alone: it keeps B's better-ranked exact copy
    # and drops A's page (documented: in a refresh the earlier record wins); the same clusters otherwise.
    shutil.rmtree(workspace.path("data", "dedup"))
    workspace.path("data", "filter", "part-cc-c-0.parquet").unlink()
    run(workspace.params())
    full = removed(workspace)
    assert full[a[0]["id"]]["dup_of"] == copy0
    assert len(full) == len(gone) and full[again]["dup_of"] == b[3]["id"]


def test_snapshot_scope_refresh_equals_a_full_build(workspace, crawls, caplog):
    """Scope snapshot: dedup within each crawl; a refresh keeps what a full build of both crawls keeps."""
    a, b = crawls["a"], crawls["b"]
    workspace.update("dedup.scope", "snapshot")
    write_crawl(workspace, "a", a)
    run(workspace.params())
    assert manifest(workspace)["cross_source"]["records"] == 0
    write_crawl(workspace, "b", b)
    with caplog.at_level(logging.INFO, logger="pipelines"):
        run(workspace.params())
    assert "refresh: 2 new shards" in caplog.text
    refreshed_kept, refreshed_gone = kept_ids(workspace), removed(workspace)
    assert set(refreshed_gone) == {b[4]["id"]}  # only B's own repeat; B's copies of A stay (another crawl)
    # ... but they are counted: B's verbatim copies of A's pages (case and spacing changed), not its near copy
    assert manifest(workspace)["cross_source"] == {"scope": "snapshot", "match": "exact", "records": 2,
                                                   "by_source": {"cc-b": 2}}
    cross = lineage.cross_source_duplicates(workspace.root)  # what the version's lineage and page show
    assert cross["kept"] and cross["records"] == 2 and cross["share"] == round(2 / (len(a) + len(b)), 6)
    assert "2 records (5.41% of dedup's input) are exact copies" in page._lineage({"cross_source_duplicates": cross})
    write_crawl(workspace, "c", crawls["c"], shards=1)  # C repeats one of B's own pages: the count grows
    run(workspace.params())
    assert manifest(workspace)["cross_source"]["by_source"] == {"cc-b": 2, "cc-c": 1}
    workspace.path("data", "filter", "part-cc-c-0.parquet").unlink(missing_ok=True)

    shutil.rmtree(workspace.path("data", "dedup"))
    run(workspace.params())
    # a full build ranks by the keep policy alone: B's upper-cased copy (quality 0.99) outranks A's page
    assert manifest(workspace)["cross_source"]["records"] == 2
    assert kept_ids(workspace) == refreshed_kept
    assert {k: (v["drop_reason"], v["dup_of"]) for k, v in removed(workspace).items()} == \
        {k: (v["drop_reason"], v["dup_of"]) for k, v in refreshed_gone.items()}


def test_a_changed_old_shard_or_setting_means_a_full_build(workspace, crawls, caplog):
    a, b = crawls["a"], crawls["b"]
    write_crawl(workspace, "a", a)
    run(workspace.params())
    write_crawl(workspace, "a", a[:-1])  # e.g. a takedown removed a record of crawl A
    write_crawl(workspace, "b", b)
    with caplog.at_level(logging.INFO, logger="pipelines"):
        run(workspace.params())
    assert "refresh:" not in caplog.text and "already complete, skipped" not in caplog.text
    assert manifest(workspace)["index"]["records"] == len(a) - 1 + len(b) - 4
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines"):
        run(workspace.update("dedup.minhash.verify_threshold", 0.7))
    assert "refresh:" not in caplog.text

    with pytest.raises(ValueError, match="dedup.scope"):
        run(workspace.update("dedup.scope", "crawl"))


def test_refresh_with_the_index_on_s3(workspace, crawls, s3env, moto_url, monkeypatch, caplog):
    """storage.root on S3: the index files are content-addressed objects there, and a refresh reads them back."""
    s3, bucket = s3env
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    workspace.update("storage", {"root": f"s3://{bucket}/lake"})
    a, b = crawls["a"], crawls["b"]
    write_crawl(workspace, "a", a)
    run(workspace.params())
    index = manifest(workspace)["index"]
    assert all(e["uri"].startswith(f"s3://{bucket}/lake/dedup/objects/")
               for seg in index["segments"] for e in seg["files"].values())
    write_crawl(workspace, "b", b)
    with caplog.at_level(logging.INFO, logger="pipelines"):
        run(workspace.params())
    assert "refresh: 2 new shards deduplicated against the dedup index (24 records)" in caplog.text
    assert manifest(workspace)["index"]["records"] == len(a) + len(b) - 4


def test_a_refresh_refuses_a_new_record_with_an_indexed_records_id(workspace, crawls):
    """The old shards are not re-read in a refresh: the index's ids are what a new id is checked against."""
    a = crawls["a"]
    write_crawl(workspace, "a", a)
    run(workspace.params())
    write_crawl(workspace, "z", [dict(a[3], source="cc-z", text="an entirely different page " * 20)], shards=1)
    with pytest.raises(ValueError, match=f"record id '{a[3]['id']}' occurs more than once"):
        run(workspace.params())
