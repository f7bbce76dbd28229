"""Hostile input: real-world breakage built from the real sample pages. Each case is decoded
correctly, or skipped/dropped and counted with its reason; nothing crashes the stage or stalls it.
Plus property-based fuzzing (hypothesis, bounded) of the WARC reader and the HTML path."""
from __future__ import annotations

import codecs
import gzip
import io
import json
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.core.shards import read_all
from pipelines.core.stats import ShardStats
from pipelines.ingest.extract import DEFAULT_EXTRACTOR, MAX_NESTING_DEPTH, UndecodableError, decode_html, get_extractor
from pipelines.ingest.items import Candidate, Defect, Skipped
from pipelines.ingest.stage import DROP_REASONS
from pipelines.ingest.warc import Seen, read_archive
from tests.fixtures.hostile import SAMPLE_WARC, members, nesting_bomb, real_pages, warc_record, write_big_record_warc

EXTRACTOR = get_extractor(DEFAULT_EXTRACTOR)


@pytest.fixture(scope="module")
def pages():
    return real_pages(3)


def read(data: bytes, max_bytes: int = 10_000_000) -> tuple[list, Defect | None]:
    """The records the reader yields for ``data``, and the first defect it reported (if any)."""
    items = [i for i in read_archive(io.BytesIO(data), EXTRACTOR, max_bytes, 1) if not isinstance(i, Seen)]
    found = [i for i in items if isinstance(i, Defect)]
    return [i for i in items if not isinstance(i, Defect)], (found[0] if found else None)


def text_of(page_html: bytes) -> str:
    """What a clean read of a real page yields: the reference for re-encoded variants."""
    (item,), err = read(warc_record(page_html))
    assert err is None and item.text
    return item.text


# ---------------------------------------------------------------- framing


def test_truncated_gzip_member_keeps_the_whole_records_before_it(pages):
    recs = [warc_record(p.html, url=p.url) for p in pages]
    data = members(*recs)
    cut = len(members(*recs[:2])) + len(gzip.compress(recs[2], mtime=0)) // 2  # mid third member
    items, err = read(data[:cut])
    assert [i.url for i in items] == [p.url for p in pages[:2]] and all(i.text for i in items)
    assert "truncated gzip member" in err.error and err.offset == len(members(*recs[:2]))
    items, err = read(data[: len(gzip.compress(recs[0], mtime=0)) // 3])  # cut inside the first member
    assert items == [] and err is not None and err.offset == 0


def test_malformed_warc_headers_are_a_counted_read_error_and_reading_goes_on(pages):
    good = warc_record(pages[0].html, url=pages[0].url)
    for bad in (b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: abc\r\n\r\nxxxx\r\n\r\n",  # non-numeric length
                b"WARC/1.0\r\nWARC-Type: response\r\n\r\nabc\r\n\r\n",  # no Content-Length at all
                b"HTTP/1.1 200 OK\r\n\r\n" + pages[1].html):  # not a WARC record at all
        items, err = read(members(good, bad, good))
        assert [(i.url, bool(i.text)) for i in items] == [(pages[0].url, True)] * 2  # the record after it is read
        assert err is not None and err.offset == len(gzip.compress(good, mtime=0))


def test_zero_length_records_are_skipped_and_reading_goes_on(pages):
    good = warc_record(pages[0].html, url=pages[0].url)
    empty_response = warc_record(b"", content_length=0, url="http://empty.example/")
    empty_response = empty_response.replace(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n", b"")
    empty_conversion = warc_record(b"", warc_type="conversion", url="http://empty-wet.example/")
    items, err = read(members(empty_response, empty_conversion, good))
    assert err is None
    skipped, conv, page = items
    assert isinstance(skipped, Skipped)
    assert conv.url == "http://empty-wet.example/" and conv.drop_reason == "empty_text"
    assert page.url == pages[0].url and page.text


def test_binary_body_labelled_html_is_dropped_as_undecodable(pages):
    junk = SAMPLE_WARC.read_bytes()[:50_000]  # gzip bytes of a real file, served as "text/html"
    items, err = read(members(warc_record(junk, url="http://junk.example/", content_type="text/html; charset=utf-8"),
                              warc_record(junk, url="http://junk2.example/")))
    assert err is None
    assert [(i.url, i.drop_reason) for i in items] == [("http://junk.example/", "undecodable"),
                                                      ("http://junk2.example/", "undecodable")]


def test_invalid_utf8_is_repaired_when_rare_and_dropped_when_dominant(pages):
    clean = text_of(pages[0].html)
    i = pages[0].html.index(b"<p")
    sprinkled = pages[0].html[:i] + b"\xff\xfe\xc3" + pages[0].html[i:]  # a few stray bytes in a real page
    (item,), _ = read(warc_record(sprinkled, content_type="text/html; charset=utf-8"))
    assert item.text and clean.split("\n")[-1] in item.text
    mostly_bad = bytes(b ^ 0x80 for b in pages[0].html)  # high bit flipped everywhere
    (item,), _ = read(warc_record(mostly_bad, content_type="text/html; charset=utf-8"))
    assert item.drop_reason == "undecodable"


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                          ("utf-8", codecs.BOM_UTF8)])
@pytest.mark.parametrize("declared", [True, False])
def test_byte_order_marks_decode_correctly_and_are_not_text(pages, encoding, bom, declared):
    clean = text_of(pages[1].html)
    body = bom + pages[1].html.decode("utf-8").encode(encoding)
    ctype = "text/html; charset=utf-16" if declared and encoding != "utf-8" else "text/html"
    (item,), err = read(warc_record(body, content_type=ctype))
    assert err is None and item.text == clean  # exactly the UTF-8 page's text, no U+FEFF


CJK = {  # (codec, label, a sentence in that script)
    "shift_jis": ("shift_jis", "Shift_JIS", "日本語のウェブページです。東京の天気は晴れです。"),
    "euc-jp": ("euc_jp", "EUC-JP", "これは日本語の文章です。京都の寺を訪れました。"),
    "gbk": ("gbk", "GBK", "这是一个中文网页。北京今天天气很好。"),
    "gb18030": ("gb18030", "GB18030", "这是一个中文网页。上海的交通很方便。"),
    "big5": ("big5", "Big5", "這是一個繁體中文網頁。台北的夜市很熱鬧。"),
    "euc-kr": ("euc_kr", "EUC-KR", "이것은 한국어 웹 페이지입니다. 서울의 날씨가 좋습니다."),
}


@pytest.mark.parametrize("name", sorted(CJK))
def test_legacy_cjk_encodings(name):
    codec, label, sentence = CJK[name]
    html = f"<html><head><title>t</title></head><body><article><p>{sentence}</p><p>{sentence}</p></article></body></html>"
    declared_meta = html.replace("<head>", f'<head><meta charset="{label}">')
    for body, ctype in ((html.encode(codec), f"text/html; charset={label}"),  # HTTP header
                        (declared_meta.encode(codec), "text/html"),  # <meta charset>
                        (html.encode(codec) * 3, "text/html")):  # undeclared: detected, or dropped
        (item,), err = read(warc_record(body, content_type=ctype))
        assert err is None
        if item.drop_reason is None:
            assert sentence in item.text, (ctype, item.text[:80])  # never kept as mojibake
        else:
            assert ctype == "text/html" and item.drop_reason == "undecodable"
        if ctype != "text/html":
            assert item.drop_reason is None  # a declared charset always decodes


def test_html_nesting_bomb_is_dropped_fast_and_normal_depth_is_extracted():
    items, err = read(members(warc_record(nesting_bomb(100_000), url="http://bomb.example/"),
                              warc_record(nesting_bomb(200, text="still here and readable"), url="http://ok.example/")))
    assert err is None
    bomb, ok = items
    assert bomb.drop_reason == "extract_error" and f"deeper than {MAX_NESTING_DEPTH}" in bomb.drop_detail
    assert ok.drop_reason is None and "still here and readable" in ok.text


def test_100mb_record_is_counted_too_large_in_bounded_memory(tmp_path):
    path = tmp_path / "big.warc.gz"
    write_big_record_warc(path, 100 * 2**20)
    # A child process, so its peak RSS is this read alone (ru_maxrss never goes down).
    code = textwrap.dedent(f"""
        import json, resource
        from pipelines.ingest.extract import DEFAULT_EXTRACTOR, get_extractor
        from pipelines.ingest.warc import read_archive
        ex = get_extractor(DEFAULT_EXTRACTOR)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with open({str(path)!r}, "rb") as f:
            items = [i for i in read_archive(f, ex, 10_000_000, 1) if hasattr(i, "url")]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"items": [[i.url, i.drop_reason, i.bytes_in] for i in items], "grew_kb": after - before}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert out["items"] == [["http://big.example/", "too_large", 100 * 2**20]]  # the payload size, counted
    assert out["grew_kb"] < 64 * 1024, f"reading a 100 MB record grew RSS by {out['grew_kb'] // 1024} MB"


# ---------------------------------------------------------------- through the stage: counted with reasons


def test_stage_counts_every_hostile_file_with_its_reason(workspace, pages, monkeypatch):
    monkeypatch.setenv("PIPELINES_WORKERS", "1")
    inputs = workspace.path("inputs")
    inputs.mkdir()
    (inputs / "empty_dir").mkdir()
    good = [warc_record(p.html, url=p.url) for p in pages]
    files = {
        "a_truncated.warc.gz": members(*good)[:-200],
        "b_empty.warc.gz": b"",
        "c_empty_gzip.warc.gz": gzip.compress(b"", mtime=0),
        "d_badheader.warc.gz": members(good[0], b"WARC/1.0\r\nContent-Length: x\r\n\r\n\r\n\r\n", good[1]),
        "e_mixed.warc.gz": members(warc_record(SAMPLE_WARC.read_bytes()[:20000], url="http://bin.example/"),
                                   warc_record(nesting_bomb(20_000), url="http://bomb.example/"),
                                   warc_record(pages[0].html + b"<!--" + b"x" * 300_000 + b"-->", url="http://big.example/"),
                                   warc_record(b"<html><body></body></html>", url="http://blank.example/"),
                                   good[2]),
    }
    for name, data in files.items():
        (inputs / name).write_bytes(data)
    params = workspace.params()
    params["ingest"].update(warc=["inputs/*.warc.gz"], wet=[], curated={}, max_record_bytes=250_000)
    workspace.set_params(params)
    from pipelines.stages import runner
    run = runner("ingest")

    summary = run(params)
    frags = {json.loads(p.read_text())["shard"]: json.loads(p.read_text())
             for p in workspace.path("data/ingest/_shards").glob("*.json")}
    stats = {next(iter(f["inputs"])).split("/")[-1]: ShardStats.from_dict(f["stats"]) for f in frags.values()}
    assert stats["a_truncated.warc.gz"].extra["read_errors"] == 1 and stats["a_truncated.warc.gz"].records_out == 2
    assert stats["b_empty.warc.gz"].extra["empty_files"] == 1
    assert stats["c_empty_gzip.warc.gz"].records_in == 0 and stats["c_empty_gzip.warc.gz"].extra["read_errors"] == 0
    bad = stats["d_badheader.warc.gz"]  # a read error at the bad record; the record after it is read
    assert bad.records_out == 2 and bad.extra["read_errors"] == 1
    mixed = stats["e_mixed.warc.gz"]
    assert {k: v for k, v in mixed.drops.items() if v} == {"undecodable": 1, "extract_error": 1, "too_large": 1,
                                                            "empty_text": 1}
    assert mixed.records_out == 1
    removed = {r["url"]: r for r in read_all(workspace.path("data/ingest/removed")).to_pylist()}
    assert {u: removed[u]["drop_reason"] for u in ("http://bin.example/", "http://bomb.example/", "http://big.example/",
                                                   "http://blank.example/")} == {
        "http://bin.example/": "undecodable", "http://bomb.example/": "extract_error",
        "http://big.example/": "too_large", "http://blank.example/": "empty_text"}
    assert all(r["id"] and r["source"] == "web" and r["source_file"] for r in removed.values())
    assert summary["skipped"]["read_errors"] == 2 and summary["skipped"]["empty_files"] == 1  # truncated + bad header

    # An empty directory is a misconfiguration, not an empty corpus: a clear error naming it.
    params["ingest"]["warc"] = ["inputs/empty_dir"]
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        run(params)


# ---------------------------------------------------------------- property-based


@pytest.fixture(scope="module")
def seed_records(pages):
    return [warc_record(p.html[:3000], url=p.url) for p in pages[:2]]


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, chunk in edits:
        pos %= max(1, len(buf))
        if kind == 0:
            buf[pos:pos + len(chunk)] = chunk  # overwrite
        elif kind == 1:
            buf[pos:pos] = chunk  # insert
        else:
            del buf[pos:pos + 1 + len(chunk) * 16]  # delete a run
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=edits, compress=st.booleans(), cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_warc_reader_never_crashes(seed_records, edits, compress, cut):
    data = _mutate(b"".join(seed_records), edits)
    data = gzip.compress(data, mtime=0) if compress else data
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    for item in read_archive(io.BytesIO(data), EXTRACTOR, 10_000_000, 1):  # damage is reported, never raised
        assert isinstance(item, (Candidate, Skipped, Seen, Defect))
        if isinstance(item, Candidate):
            assert item.key and (item.text or item.drop_reason in DROP_REASONS)
        if isinstance(item, Defect):
            assert 0 <= item.offset <= len(data) and item.error


@settings(max_examples=100, deadline=None)
@given(body=st.one_of(st.binary(max_size=3000), st.text(max_size=1500).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       charset=st.sampled_from([None, "utf-8", "latin1", "utf-16", "shift_jis", "x-unknown", "gb2312", ""]),
       wrap=st.booleans())
def test_fuzz_html_decode_and_extract_never_crash(body, charset, wrap):
    if wrap:
        body = b"<html><body><div><p>" + body + b"</p></div></body></html>"
    try:
        html = decode_html(body, charset)
    except UndecodableError:
        return
    assert isinstance(html, str)
    try:
        assert isinstance(EXTRACTOR.extract(html, None), str)
    except ValueError as e:  # only the nesting guard may refuse a page
        assert "nesting" in str(e)
