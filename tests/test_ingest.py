"""Ingest on the real samples: counts per source, skips and drops accounted for,
corrupt/empty/missing inputs, S3 inputs (moto server), byte-identical re-runs."""
from __future__ import annotations

import bz2
import gzip
import json
import re
import shutil

import pyarrow.compute as pc
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipelines.core.schema import CORE_COLUMNS
from pipelines.core.shards import read_all, read_shard
from pipelines.core.stats import ShardStats
from pipelines.ingest.curated import wikitext_to_text
from pipelines.ingest.extract import decode_html
from pipelines.stages import runner
run = runner("ingest")

RESILIPARSE_WARC = "samples/warc/cc-main-2020-34_resiliparse-sample.warc.gz"
IA_WARC = "samples/warc/ia-2008_archive-org_aut-example.warc.gz"
WET = "samples/warc/cc-main-2020-50_whatsinthebox-sample.warc.wet.gz"
WIKI = "samples/text/wikipedia/enwiki-pages-articles1-shortened.xml.bz2"


def _out(ws):
    return ws.path("data", "ingest")


def _fragments(ws) -> dict[str, dict]:
    return {p.name[: -len(".json")]: json.loads(p.read_text()) for p in sorted(_out(ws).joinpath("_shards").glob("*.json"))}


def _stats_by_file(ws) -> dict[str, ShardStats]:
    """Shard stats keyed by the input file name the shard was made from."""
    out = {}
    for shard, frag in _fragments(ws).items():
        (name,) = frag["inputs"]
        out[name] = ShardStats.from_dict(frag["stats"])
    return out


def _count_types(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.any_type, parse_http=True):
            kind = str(rec.record_type)
            if kind == "response" and rec.http_content_type == "text/html" and rec.http_headers.status_code == 200:
                kind = "html_response"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _wiki_subset(ws) -> str:
    """The first 20 pages of the real dump (3 articles, 17 redirects); one article moved to another namespace."""
    xml = bz2.open(ws.path(WIKI)).read()
    end = 0
    for _ in range(20):
        end = xml.index(b"</page>", end) + len(b"</page>")
    subset = xml[:end] + b"\n</mediawiki>\n"
    pages = re.findall(rb"<page>.*?</page>", subset, re.S)
    articles = [p for p in pages if b"<redirect" not in p]
    assert len(articles) == 3 and len(pages) == 20
    subset = subset.replace(articles[-1], articles[-1].replace(b"<ns>0</ns>", b"<ns>4</ns>"))
    rel = "inputs/wiki20.xml.bz2"
    ws.path("inputs").mkdir(exist_ok=True)
    ws.path(rel).write_bytes(bz2.compress(subset))
    return rel


def _jsonl_head(ws, src: str, lines: int) -> str:
    """The first lines of a real JSONL sample (the full ones only make langid time longer)."""
    with gzip.open(ws.path(src), "rb") as f:
        head = b"".join(f.readline() for _ in range(lines))
    rel = "inputs/" + src.rsplit("/", 1)[-1]
    ws.path("inputs").mkdir(exist_ok=True)
    ws.path(rel).write_bytes(gzip.compress(head, mtime=0))
    return rel


def _all_files(ws) -> dict[str, bytes]:
    return {str(p.relative_to(_out(ws))): p.read_bytes() for p in sorted(_out(ws).rglob("*")) if p.is_file()}


def test_ingest_real_samples_accounted_and_byte_identical(workspace):
    params = workspace.params()
    curated = params["ingest"]["curated"]
    curated["wikipedia"]["paths"] = [_wiki_subset(workspace)]
    curated["math"]["paths"] = [_jsonl_head(workspace, "samples/text/math/gsm8k_train_lines0001-3737.jsonl.gz", 400)]
    curated["cc-main-2019-30"]["paths"] = [_jsonl_head(
        workspace, "samples/text/web_cc/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz", 150)]
    workspace.set_params(params)
    summary = run(params)

    # Every source comes through.
    expected_sources = {"cc-main-2020-34", "cc-main-2020-50", "cc-main-2024-22", "web", "cc-main-2019-30",
                        "wikipedia", "books", "news", "code", "math"}
    assert set(summary["records_out_by_source"]) == expected_sources
    assert all(n > 0 for n in summary["records_out_by_source"].values())
    table = read_all(_out(workspace))
    assert table.column_names[: len(CORE_COLUMNS)] == CORE_COLUMNS
    assert table.num_rows == summary["records_out"]
    counts = table.group_by("source").aggregate([("id", "count")]).to_pydict()
    assert dict(zip(counts["source"], counts["id_count"])) == summary["records_out_by_source"]
    assert summary["records_out_by_source"]["books"] == 6
    assert summary["records_out_by_source"]["news"] == 300  # one article per line
    assert summary["records_out_by_source"]["code"] == 2 * 164
    assert summary["records_out_by_source"]["math"] == 400

    # Ids: unique, and the stable function of source + key.
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(t.strip() for t in table.column("text").to_pylist())
    web = table.filter(pc.equal(table.column("source"), "web")).to_pylist()  # dolma + 2008 WARCs
    assert all(r["url"].startswith("http") and r["domain"] for r in web)  # dolma writes <uri>: unwrapped
    langs = table.column("lang").to_pylist()
    assert None not in langs and langs.count("en") > 0.8 * len(langs)
    scores = table.column("lang_score").to_numpy()
    assert ((scores >= 0) & (scores <= 1.0001)).all()

    stats = _stats_by_file(workspace)
    cut_wet = "samples/warc/cc-main-2020-50_whatsinthebox-sample.warc.wet.gz"  # its last record is cut in its headers
    for name, st in stats.items():
        assert st.records_in == st.records_out + st.records_dropped
        assert st.extra["read_errors"] == (name == cut_wet) and st.extra["empty_files"] == 0
    assert stats[cut_wet].problems == ["byte 1083246: the record at byte 1083246 is cut short inside its headers"]

    # The resiliparse sample: 16 HTML responses, all of them accounted for; other records only counted.
    types = _count_types(workspace.path(RESILIPARSE_WARC))
    st = stats[RESILIPARSE_WARC]
    assert types["html_response"] == 16
    assert st.records_in == st.records_out + st.records_dropped == 16
    assert st.extra["skipped_request"] == types["request"] == 17
    assert st.extra["skipped_metadata"] == types["metadata"] == 16
    assert st.extra["skipped_warcinfo"] == 1
    # The 2008 crawl: 299 responses, of which 94 are HTML with a 200 status.
    ia_types = _count_types(workspace.path(IA_WARC))
    ia = stats[IA_WARC]
    assert ia.records_in == ia_types["html_response"] == 94
    assert ia.extra["skipped_non_html"] + ia.extra["skipped_http_status"] + ia.records_in == 299
    assert ia.extra["skipped_http_status"] > 0 and ia.extra["skipped_non_html"] > 0

    # Drops land in removed/ with reason, the ids/urls they had, and empty text.
    removed = read_all(_out(workspace) / "removed")
    assert removed.num_rows == summary["records_dropped"] == sum(s.records_dropped for s in stats.values())
    assert set(removed.column("drop_reason").to_pylist()) <= {"too_large", "undecodable", "empty_text",
                                                             "extract_error", "malformed"}
    assert set(removed.column("id").to_pylist()).isdisjoint(ids)
    stats_table = read_shard(_out(workspace) / "_stats.parquet")
    assert "drop__empty_text" in stats_table.column_names and "extra__read_errors" in stats_table.column_names

    # WET conversions: text is the body; provenance from the WARC headers.
    wet = table.filter(pc.equal(table.column("source_file"), WET))
    assert wet.num_rows == stats[WET].records_out > 300
    with open(workspace.path(WET), "rb") as f:
        first = next(iter(ArchiveIterator(f, record_types=WarcRecordType.conversion)))
        first_text = first.reader.read().decode("utf-8").strip()
        first_url, first_pos = first.headers["WARC-Target-URI"], first.stream_pos
    row = wet.slice(0, 1).to_pylist()[0]
    assert (row["text"], row["url"], row["source_offset"]) == (first_text, first_url, first_pos)
    assert row["source"] == "cc-main-2020-50" and row["crawl_date"].startswith("2020-")
    assert row["domain"] and row["domain"] in row["url"]

    # Wikipedia: redirects and non-article pages skipped (counted), articles with url and clean text.
    wiki_stats = next(s for name, s in stats.items() if name.startswith("inputs/wiki20"))
    assert wiki_stats.extra["skipped_redirect"] == 17 and wiki_stats.extra["skipped_namespace"] == 1
    wiki = table.filter(pc.equal(table.column("source"), "wikipedia")).to_pylist()
    assert len(wiki) == 2
    assert {r["url"] for r in wiki} == {"https://en.wikipedia.org/wiki/Anarchism", "https://en.wikipedia.org/wiki/Autism"}
    assert all("[[" not in r["text"] and "{{" not in r["text"] and r["lang"] == "en" for r in wiki)

    # JSONL: dotted url/date fields of the dolma web sample.
    dolma = table.filter(pc.equal(table.column("source"), "cc-main-2019-30")).slice(0, 1).to_pylist()[0]
    assert dolma["url"].startswith("http") and dolma["crawl_date"] == "2019-07-17"

    # A re-run from scratch gives the same bytes (shards, removed/, stats, manifest).
    before = _all_files(workspace)
    assert run(params) == summary  # resumed: every shard already complete
    assert _all_files(workspace) == before
    shutil.rmtree(_out(workspace))
    again = run(params)
    assert again == summary
    assert _all_files(workspace) == before


def test_corrupt_truncated_and_empty_inputs_are_counted_not_fatal(workspace):
    raw = workspace.path(IA_WARC).read_bytes()
    workspace.path("inputs").mkdir()
    workspace.path("inputs/truncated.warc.gz").write_bytes(raw[: len(raw) // 2])
    workspace.path("inputs/empty.warc.gz").write_bytes(b"")
    workspace.path("inputs/garbage.warc.gz").write_bytes(b"this is not a WARC file\n" * 20)
    jsonl = gzip.decompress(workspace.path("samples/text/code/humaneval-x_js.jsonl.gz").read_bytes())
    workspace.path("inputs/cut.jsonl.gz").write_bytes(gzip.compress(jsonl)[:20000])
    params = workspace.params()
    params["ingest"].update(warc=[IA_WARC, "inputs/*.warc.gz"], wet=[], curated={
        "code": {"kind": "jsonl", "paths": ["inputs/cut.jsonl.gz"], "fields": ["prompt", "canonical_solution"]}})
    workspace.set_params(params)
    summary = run(params)
    stats = _stats_by_file(workspace)

    full, cut = stats[IA_WARC], stats["inputs/truncated.warc.gz"]
    assert full.extra["read_errors"] == 0
    assert cut.extra["read_errors"] == 1
    assert 0 < cut.records_in < full.records_in
    assert stats["inputs/empty.warc.gz"].extra["empty_files"] == 1
    assert stats["inputs/empty.warc.gz"].records_in == 0
    assert stats["inputs/garbage.warc.gz"].extra["read_errors"] == 1
    assert stats["inputs/cut.jsonl.gz"].extra["read_errors"] == 1 and stats["inputs/cut.jsonl.gz"].records_out > 0
    assert summary["skipped"]["read_errors"] == 3 and summary["skipped"]["empty_files"] == 1

    # The records read before the cut are exactly the first records of the whole file.
    table = read_all(_out(workspace))
    whole = table.filter(pc.equal(table.column("source_file"), IA_WARC)).to_pylist()
    part = table.filter(pc.equal(table.column("source_file"), "inputs/truncated.warc.gz")).to_pylist()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "source_file"} for r in rows]  # noqa: E731
    assert len(part) == cut.records_out > 0
    assert strip(part) == strip(whole[: len(part)])


def test_missing_inputs_and_bad_params_raise_naming_them(workspace):
    params = workspace.update("ingest.warc", ["samples/warc/nope.warc.gz"])
    with pytest.raises(FileNotFoundError, match="nope.warc.gz"):
        run(params)
    params = workspace.update("ingest.warc", ["samples/warc/*.nothing.gz"])
    with pytest.raises(FileNotFoundError, match=r"\*\.nothing\.gz"):
        run(params)
    params = workspace.update("ingest.warc", [RESILIPARSE_WARC])
    params = workspace.update("ingest.extractor", "boilerpipe")
    with pytest.raises(ValueError, match="boilerpipe"):
        run(params)
    params = workspace.update("ingest.extractor", "resiliparse")
    params["ingest"]["curated"] = {"x": {"kind": "pdf", "paths": ["samples/text/books/*.txt"]}}
    with pytest.raises(ValueError, match="curated.x.kind"):
        run(params)


def test_trafilatura_extractor_and_charset_decoding(workspace):
    params = workspace.params()
    params["ingest"].update(warc=[RESILIPARSE_WARC], wet=[], curated={}, extractor="trafilatura",
                            max_record_bytes=30000)
    with open(workspace.path(RESILIPARSE_WARC), "rb") as f:
        large = sorted(r.headers["WARC-Target-URI"] for r in ArchiveIterator(f, record_types=WarcRecordType.response)
                       if r.content_length > 30000)
    assert 0 < len(large) < 16
    summary = run(params)
    st = _stats_by_file(workspace)[RESILIPARSE_WARC]
    assert st.records_in == 16 and st.drops["too_large"] == len(large)
    assert summary["records_out"] > 16 - len(large) - 3
    removed = read_all(_out(workspace) / "removed").to_pylist()
    assert sorted(r["url"] for r in removed if r["drop_reason"] == "too_large") == large
    assert all(r["text"] == "" and r["id"] and r["source"] == "cc-main-2020-34" for r in removed)

    html = "<html><head><meta charset='windows-1252'></head><body><p>Café déjà vu</p></body></html>"
    assert "Café déjà vu" in decode_html(html.encode("cp1252"), None)  # meta charset
    assert "Café déjà vu" in decode_html(html.encode("cp1252"), "latin1")  # header charset (WHATWG: cp1252)
    assert "Café" in decode_html(html.replace("windows-1252", "utf-8").encode("utf-8"), None)
    with pytest.raises(ValueError, match="undecodable"):
        decode_html(bytes(range(256)) * 8, "utf-8")
    assert wikitext_to_text("'''X''' is [[a|b]].<ref>c</ref>\n[[File:y.png|thumb|z]]\n== H ==\n{{t}}") == "X is b.\n\nH"


def test_s3_inputs_match_local_file(workspace, moto_s3, monkeypatch):
    moto_s3.setenv(monkeypatch)
    s3 = moto_s3.empty_bucket("bucket")
    key = "crawl-data/CC-MAIN-2024-22/segments/1/warc/x.warc.gz"
    s3.put_object(Bucket="bucket", Key=key, Body=workspace.path(RESILIPARSE_WARC).read_bytes())

    params = workspace.params()
    params["ingest"].update(warc=[RESILIPARSE_WARC], wet=[], curated={})
    local = run(params)
    local_rows = read_all(_out(workspace)).to_pylist()
    shutil.rmtree(_out(workspace))

    params["ingest"]["warc"] = ["s3://bucket/crawl-data/CC-MAIN-2024-22/segments/*/warc/*.warc.gz"]
    remote = run(params)
    remote_rows = read_all(_out(workspace)).to_pylist()
    assert remote["records_out"] == local["records_out"] == 16
    assert {r["source"] for r in remote_rows} == {"cc-main-2024-22"}
    assert {r["source_file"] for r in remote_rows} == {f"s3://bucket/{key}"}
    same = ("text", "url", "crawl_date", "lang", "source_offset")
    assert [{k: r[k] for k in same} for r in remote_rows] == [{k: r[k] for k in same} for r in local_rows]
    manifest = json.loads(_out(workspace).joinpath("_manifest.json").read_text())
    assert [list(s["inputs"]) for s in manifest["shards"].values()] == [[f"s3://bucket/{key}"]]

    params["ingest"]["warc"] = ["s3://bucket/crawl-data/missing.warc.gz"]
    with pytest.raises(FileNotFoundError, match="missing.warc.gz"):
        run(params)


def test_adding_an_input_file_reads_only_that_file(workspace, caplog):
    """Shards are named after their input files and the input lists are not part of the shard hash:
    a refresh that adds a file leaves every other shard complete (not rewritten, not re-read)."""
    params = workspace.params()
    params["ingest"].update(warc=[RESILIPARSE_WARC], wet=[], curated={"books": params["ingest"]["curated"]["books"]})
    workspace.set_params(params)
    run(params)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in _out(workspace).glob("part-*.parquet")}
    assert len(before) == 1 + len(list(workspace.path("samples/text/books").glob("*.txt")))

    params["ingest"]["warc"].append(IA_WARC)
    workspace.set_params(params)
    caplog.clear()
    with caplog.at_level("INFO", logger="pipelines.core.runner"):
        run(params)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in _out(workspace).glob("part-*.parquet")}
    assert {n: after[n] for n in before} == before and len(after) == len(before) + 1
    assert f"{len(before)} skipped as complete" in caplog.text
    new = (set(after) - set(before)).pop()
    assert new.startswith("part-web-") and read_shard(_out(workspace) / new).num_rows > 0
