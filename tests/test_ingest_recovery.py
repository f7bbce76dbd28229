"""Real-world crawl-file defects: every record that can be parsed comes out, every defect is counted
with the byte offset where it lies, and check_ingest fails (or warns) on a file that lost its pages.

The fixtures are built at test time from the real sample pages, the way real files break: bare-LF
HTTP heads with an EUC-JP body (a 2009 crawl), an extra CRLF after a WET file's warcinfo (2014 WET
files), a record cut short in the middle of a file, a garbage member in the middle of a gzip file."""
from __future__ import annotations

import gzip
import io
import json
import zlib

import pytest

from pipelines.checks.gate import GateFailed, report_path, run_gate
from pipelines.core.stats import read_stats
from pipelines.ingest.extract import get_extractor
from pipelines.ingest.items import Candidate, Defect, Skipped
from pipelines.ingest.warc import Seen, read_archive
from tests.fixtures.hostile import members, real_pages, warc_record

EXTRACTOR = get_extractor("resiliparse")
JAPANESE = ("<html><head><title>古い日本語のページ</title></head><body><h1>季節の便り</h1>"
            "<p>春になると、川沿いの道には桜の花が咲き、多くの人が散歩を楽しみます。"
            "この町では毎年四月に小さな祭りが開かれ、子どもたちが歌や踊りを披露します。</p>"
            "<p>夏には花火大会があり、夜空に大きな花が広がります。秋の紅葉も美しく、"
            "山の上から町全体を眺めることができます。</p></body></html>")


@pytest.fixture(scope="module")
def pages():
    return real_pages(4)


def read(data: bytes) -> list:
    """What the reader yields for ``data``, without the per-type counts."""
    return [i for i in read_archive(io.BytesIO(data), EXTRACTOR, 10_000_000, 1) if not isinstance(i, Seen)]


def documents(items) -> list[str]:
    return [i.url for i in items if isinstance(i, Candidate) and i.text]


def defects(items) -> list[Defect]:
    return [i for i in items if isinstance(i, Defect)]


def member_offsets(*records: bytes) -> list[int]:
    out, at = [], 0
    for r in records:
        out.append(at)
        at += len(gzip.compress(r, mtime=0))
    return out


def raw_response(http_head: bytes, body: bytes, url: str) -> bytes:
    """A WARC response whose HTTP head is given verbatim (line ends and all)."""
    rec = warc_record(b"", url=url, warc_type="resource")  # framing only; type and block replaced below
    block = http_head + body
    head = rec.split(b"\r\n\r\n", 1)[0].replace(b"WARC-Type: resource", b"WARC-Type: response")
    head = head.replace(b"Content-Type: text/plain", b"Content-Type: application/http; msgtype=response")
    head = head.rsplit(b"Content-Length: ", 1)[0] + f"Content-Length: {len(block)}".encode()
    return head + b"\r\n\r\n" + block + b"\r\n\r\n"


# ---------------------------------------------------------------- HTTP heads as old crawls wrote them


def test_bare_lf_http_head_with_euc_jp_body_is_a_japanese_document():
    body = JAPANESE.encode("euc-jp")
    head = b"HTTP/1.1 200 OK\nDate: Tue, 03 Feb 2009 10:00:00 GMT\nContent-Type: text/html; charset=EUC-JP\n\n"
    items = read(members(*(raw_response(head, body, f"http://jp{i}.example/") for i in range(3))))
    assert not defects(items)
    docs = [i for i in items if isinstance(i, Candidate)]
    assert len(docs) == 3 and all(d.text and "桜の花が咲き" in d.text for d in docs)


@pytest.mark.parametrize("content_type, sniffed", [
    (None, True),  # no Content-Type at all
    (b"html", True),  # garbled: not a type/subtype
    (b"image/png", False),  # an explicit non-HTML type is believed
])
def test_missing_or_garbled_content_type_is_sniffed_from_the_body(pages, content_type, sniffed):
    head = b"HTTP/1.1 200 OK\r\n" + (b"Content-Type: " + content_type + b"\r\n" if content_type else b"") + b"\r\n"
    (item,) = read(raw_response(head, pages[0].html, pages[0].url))
    assert (isinstance(item, Candidate) and bool(item.text)) == sniffed
    if not sniffed:
        assert item == Skipped("non_html")
    (binary,) = read(raw_response(b"HTTP/1.1 200 OK\r\n\r\n", bytes(range(256)) * 8, "http://bin.example/"))
    assert binary == Skipped("non_html")  # nothing to sniff: not a document


# ---------------------------------------------------------------- framing defects: nothing after them is lost


@pytest.mark.parametrize("layout", ["members", "plain", "one_gzip_stream"])
def test_extra_crlf_after_warcinfo_in_a_wet_file_loses_no_document(pages, layout):
    info = warc_record(b"software: Nutch 1.6\r\nformat: WARC File Format 1.0\r\n", warc_type="warcinfo")
    convs = [warc_record(f"Document {i}. {p.url} has this text.".encode(), warc_type="conversion", url=p.url)
             for i, p in enumerate(pages)]
    records = [info + b"\r\n", *convs]  # 2014 WET files: one CRLF too many after the warcinfo record
    data = {"members": members(*records), "plain": b"".join(records),
            "one_gzip_stream": gzip.compress(b"".join(records), mtime=0)}[layout]
    items = read(data)
    assert not defects(items)
    assert documents(items) == [p.url for p in pages]


@pytest.mark.parametrize("compressed", [True, False])
def test_record_cut_short_mid_file_keeps_every_record_after_it(pages, compressed):
    recs = [warc_record(p.html, url=p.url) for p in pages]
    cut = recs[1][: len(recs[1]) // 2]  # its declared Content-Length runs into the next record
    records = [recs[0], cut, recs[2], recs[3]]
    data = members(*records) if compressed else b"".join(records)
    items = read(data)
    assert documents(items) == [pages[0].url, pages[2].url, pages[3].url]
    (d,) = defects(items)
    offsets = member_offsets(*records) if compressed else [0, len(recs[0])]
    assert d.offset == offsets[1] and "cut short" in d.error
    got = {i.url: i.offset for i in items if isinstance(i, Candidate)}
    assert got[pages[2].url] == (offsets[2] if compressed else len(recs[0]) + len(cut))


def test_garbage_or_corrupt_member_mid_gzip_keeps_every_member_after_it(pages):
    recs = [warc_record(p.html, url=p.url) for p in pages]
    good = [gzip.compress(r, mtime=0) for r in recs]
    garbage = b"this is not gzip at all \x00\xff" * 50
    corrupt = bytearray(good[1])
    corrupt[40:60] = b"\x00" * 20  # deflate data destroyed, header intact
    for bad, lost in ((garbage, []), (bytes(corrupt), [pages[1].url])):
        data = good[0] + bad + good[1] + good[2] + good[3] if not lost else good[0] + bad + good[2] + good[3]
        items = read(data)
        expected = [p.url for p in pages if p.url not in lost]
        assert documents(items) == expected
        (d,) = defects(items)
        assert d.offset == len(good[0]), d  # where the bad member starts, not how much was buffered
        offsets = {i.url: i.offset for i in items if isinstance(i, Candidate)}
        assert offsets[pages[3].url] == len(data) - len(good[3])


def test_truncated_final_member_is_a_defect_at_its_offset(pages):
    recs = [warc_record(p.html, url=p.url) for p in pages[:3]]
    data = members(*recs)
    start = len(members(*recs[:2]))
    items = read(data[: start + (len(data) - start) // 2])
    assert documents(items) == [pages[0].url, pages[1].url]
    (d,) = defects(items)
    assert d.offset == start and "truncated gzip member" in d.error


def test_garbage_between_plain_records_and_broken_headers_are_skipped_to_the_next_record(pages):
    recs = [warc_record(p.html, url=p.url) for p in pages]
    noise = b"HTTP/1.1 200 OK\r\nthis line is not a WARC record\r\n" * 3
    broken = b"WARC/1.0\r\nWARC-Type: response\r\nthis header has no colon\r\n\r\n<html>x</html>\r\n\r\n"
    data = recs[0] + noise + recs[1] + broken + recs[2] + recs[3]
    items = read(data)
    assert documents(items) == [p.url for p in pages]
    assert [d.offset for d in defects(items)] == [len(recs[0]), len(recs[0]) + len(noise) + len(recs[1])]


def test_zip_bomb_member_is_inflated_in_bounded_pieces(pages):
    bomb_body = b"<html><body><p>" + b"a" * (64 << 20) + b"</p></body></html>"
    bomb = warc_record(bomb_body, url="http://bomb.example/")
    data = members(bomb, warc_record(pages[0].html, url=pages[0].url))
    items = [i for i in read_archive(io.BytesIO(data), EXTRACTOR, 1_000_000, 1) if not isinstance(i, Seen)]
    assert [(i.url, i.drop_reason) for i in items] == [("http://bomb.example/", "too_large"), (pages[0].url, None)]


# ---------------------------------------------------------------- through the stage and its gate


def _ingest(workspace, files: dict[str, bytes], **checks):
    inputs = workspace.path("inputs")
    inputs.mkdir(exist_ok=True)
    for name, data in files.items():
        (inputs / name).write_bytes(data)
    params = workspace.params()
    params["ingest"].update(warc=["samples/warc/ia-2008_archive-org_aut-example.warc.gz", "inputs/*.warc.gz"],
                            wet=["samples/warc/cc-main-2020-50_whatsinthebox-sample.warc.wet.gz"], curated={})
    params["checks"]["ingest"].update(min_records=10, **checks)
    params["checks"]["data_docs"] = False
    workspace.set_params(params)
    from pipelines.stages import runner
    runner("ingest")(params)
    return params


def test_stage_counts_defects_with_offsets_and_the_gate_names_each_bad_file(workspace, pages):
    recs = [warc_record(p.html, url=p.url) for p in pages]
    good = [gzip.compress(r, mtime=0) for r in recs]
    images = members(*(raw_response(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n", b"\x89PNG" + bytes(400),
                                    f"http://img{i}.example/x.png") for i in range(20)))
    files = {
        "damaged.warc.gz": good[0] + b"garbage between members" * 10 + good[1] + good[2],
        "all_images.warc.gz": images,  # a file that gives no document: it "vanished"
        "japanese.warc.gz": members(*(raw_response(b"HTTP/1.0 200 OK\nContent-Type: text/html; charset=euc-jp\n\n",
                                                   JAPANESE.encode("euc-jp"), f"http://jp{i}.example/")
                                      for i in range(5))),
    }
    params = _ingest(workspace, files)
    by_file = {}
    manifest = json.loads(workspace.path("data/ingest/_manifest.json").read_text())
    for st in read_stats(workspace.path("data/ingest/_stats.parquet")):
        by_file[manifest["shard_inputs"][st.shard].split("/")[-1]] = st
    damaged = by_file["damaged.warc.gz"]
    assert damaged.extra["read_errors"] == 1 and damaged.records_out == 3
    assert damaged.problems == [f"byte {len(good[0])}: corrupt gzip data in the member at byte {len(good[0])}: "
                                "Error -3 while decompressing data: incorrect header check"]
    assert by_file["japanese.warc.gz"].records_out == 5 and by_file["japanese.warc.gz"].extra["payload_records"] == 5
    assert by_file["all_images.warc.gz"].records_out == 0 and by_file["all_images.warc.gz"].extra["skipped_non_html"] == 20
    wet = by_file["cc-main-2020-50_whatsinthebox-sample.warc.wet.gz"]  # the sample's last record is cut in its headers
    assert wet.extra["read_errors"] == 1 and wet.problems[0].startswith("byte 1083246: ")

    # Default thresholds: 1 bad file of 5 is far more than 1%: the gate fails and names it.
    with pytest.raises(GateFailed) as failed:
        run_gate("ingest", params)
    report = json.loads(report_path("ingest", workspace.root).read_text())
    files_checks = {c["column"]: c for c in report["checks"] if c["batch"] == "files"}
    assert not files_checks["yield"]["success"] and not files_checks["read_error_rate"]["success"]
    assert "all_images.warc.gz" in json.dumps(files_checks["yield"]["observed"])
    assert "yield" in str(failed.value)
    assert any(w.startswith("inputs/damaged.warc.gz:") and f"byte {len(good[0])}" in w for w in report["warnings"])

    # Thresholds are rates: a corpus may hold some bad files and pass, with a warning naming each.
    params["checks"]["ingest"]["max_bad_file_share"] = 0.25
    run_gate("ingest", params)
    report = json.loads(report_path("ingest", workspace.root).read_text())
    assert report["success"]
    assert any(w.startswith("inputs/all_images.warc.gz: yield 0.000") for w in report["warnings"])
    assert any(w.startswith("passed with exceptions") and "yield" in w for w in report["warnings"])


def test_a_file_that_is_mostly_unreadable_is_a_bad_file(workspace, pages):
    recs = [warc_record(p.html, url=p.url) for p in pages[:2]]
    noise = b"".join(zlib.compress(bytes([i]) * 300)[2:] for i in range(40))  # raw deflate runs, no gzip header
    files = {"noisy.warc.gz": members(recs[0]) + noise + b"\x1f\x8b\x08" + noise + members(recs[1])}
    params = _ingest(workspace, files, max_file_read_error_rate=0.2)
    with pytest.raises(GateFailed):
        run_gate("ingest", params)
    report = json.loads(report_path("ingest", workspace.root).read_text())
    rates = {c["column"]: c for c in report["checks"] if c["batch"] == "files"}
    assert not rates["read_error_rate"]["success"]
    assert "noisy.warc.gz" in json.dumps(rates["read_error_rate"]["observed"])
