"""Encodings through the real WARC reader and extractor: real pages re-encoded to EUC-JP, Shift-JIS,
GB2312 and UTF-16 (with/without BOM, with/without a charset in the HTTP header or a <meta>), plus
invalid UTF-8 and binary junk: each record is decoded correctly or counted as undecodable, never a crash."""
from __future__ import annotations

import gzip
import io
import json
import re

import pytest

from pipelines.core.shards import read_all
from pipelines.ingest.extract import DEFAULT_EXTRACTOR, get_extractor
from pipelines.ingest.items import Candidate
from pipelines.stages import runner
run = runner("ingest")
from pipelines.ingest.warc import read_archive
from tests.fixtures.langid import LANGID
from tests.fixtures.project import SHARED_DATA
from tests.fixtures.real_text import web_docs

BENCH = SHARED_DATA / "html" / "article-extraction-benchmark"


def _lines(lang: str, encoding: str, n: int = 6) -> list[str]:
    """Lines of a real crawled page in ``lang`` that the target encoding can represent."""
    for d in web_docs():
        if LANGID.classify(d["text"])[0] != lang:
            continue
        lines = [ln.strip(" •\t") for ln in d["text"].splitlines() if len(ln.strip()) >= 12]
        ok = []
        for ln in lines:
            try:
                ln.encode(encoding)
                ok.append(ln)
            except UnicodeEncodeError:
                pass
        if len(ok) >= 3:
            return ok[:n]
    raise AssertionError(f"no {lang} page encodable in {encoding}")


def _english_page() -> tuple[str, str]:
    gold = json.loads((BENCH / "ground-truth.json").read_text(encoding="utf-8"))
    key = sorted(gold)[0]
    html = gzip.decompress((BENCH / "html" / f"{key}.html.gz").read_bytes()).decode("utf-8")
    first = gold[key]["articleBody"].split("\n")[0][:60]
    return re.sub(r"<meta[^>]*charset[^>]*>", "", html, flags=re.I), first


def _page(lines: list[str], meta: str | None = None) -> str:
    head = f'<meta charset="{meta}">' if meta else ""
    body = "".join(f"<p>{ln}</p>\n" for ln in lines)
    return f"<!DOCTYPE html><html><head>{head}<title>t</title></head><body><article>{body}</article></body></html>"


def _warc_record(i: int, body: bytes, content_type: str) -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://enc.example/{i}\r\n"
            f"WARC-Date: 2024-05-17T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{i:012d}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return gzip.compress(head + http + b"\r\n\r\n", mtime=0)


def cases() -> list[tuple[str, bytes, str, str | None, bool]]:
    """(name, body, HTTP content type, a line expected in the text (None: undecodable), unused flag)."""
    ja = _lines("ja", "shift_jis")
    ja_euc = [ln for ln in ja if _encodable(ln, "euc_jp")]
    zh = _lines("zh", "gb2312")
    en_html, en_line = _english_page()
    bad_utf8 = _page(ja).encode("utf-8")
    bad_utf8 = bad_utf8[:200] + b"\xff\xfe\xc3" + bad_utf8[200:400] + b"\x80\x80" + bad_utf8[400:]
    return [
        ("euc-jp, header", _page(ja_euc).encode("euc_jp"), "text/html; charset=EUC-JP", ja_euc[-1], True),
        ("shift-jis, meta only", _page(ja, "shift_jis").encode("shift_jis"), "text/html", ja[-1], True),
        ("shift-jis, undeclared", _page(ja).encode("shift_jis"), "text/html", ja[-1], True),
        ("gb2312, header", _page(zh).encode("gb2312"), "text/html; charset=gb2312", zh[-1], True),
        ("gb2312, undeclared", _page(zh).encode("gb2312"), "text/html", zh[-1], True),
        ("utf-16 BOM, no header", b"\xff\xfe" + en_html.encode("utf-16-le"), "text/html", en_line, True),
        ("utf-16 BOM, wrong header", b"\xfe\xff" + en_html.encode("utf-16-be"), "text/html; charset=utf-8", en_line, True),
        ("utf-16le no BOM, header", en_html.encode("utf-16-le"), "text/html; charset=UTF-16LE", en_line, True),
        ("utf-16le no BOM, undeclared", en_html.encode("utf-16-le"), "text/html", en_line, True),
        ("utf-16be no BOM, wrong header", en_html.encode("utf-16-be"), "text/html; charset=iso-8859-1", en_line, True),
        ("invalid utf-8, header", bad_utf8, "text/html; charset=utf-8", ja[-1], True),
        ("binary labelled html", bytes(range(256)) * 64, "text/html; charset=utf-8", None, True),
    ]


def _encodable(s: str, enc: str) -> bool:
    try:
        s.encode(enc)
        return True
    except UnicodeEncodeError:
        return False


@pytest.fixture(scope="module")
def encoded_cases():
    return cases()


def test_each_encoding_is_decoded_or_counted_undecodable(encoded_cases):
    warc = b"".join(_warc_record(i, body, ctype) for i, (_, body, ctype, _, _) in enumerate(encoded_cases))
    items = [it for it in read_archive(io.BytesIO(warc), get_extractor(DEFAULT_EXTRACTOR), 10_000_000, 1)
             if isinstance(it, Candidate)]
    assert len(items) == len(encoded_cases)  # no record lost, nothing raised
    for item, (name, _, _, line, _) in zip(items, encoded_cases):
        if line is None:
            assert item.drop_reason == "undecodable", name
            continue
        assert item.drop_reason is None and line in item.text, (name, item.drop_reason, item.text[:200])
    bad = next(it for it, c in zip(items, encoded_cases) if c[0].startswith("invalid utf-8"))
    assert 0 < bad.text.count("\ufffd") <= 5  # invalid bytes become replacement characters, the rest survives


def test_ingest_stage_counts_undecodable_records(workspace, encoded_cases):
    path = workspace.path("enc.warc.gz")
    path.write_bytes(b"".join(_warc_record(i, body, ctype) for i, (_, body, ctype, _, _) in enumerate(encoded_cases)))
    params = workspace.params()
    params["ingest"].update(warc=[str(path)], wet=[], curated={})
    summary = run(params)
    kept = read_all(workspace.path("data/ingest")).to_pylist()
    removed = read_all(workspace.path("data/ingest/removed")).to_pylist()
    assert len(kept) + len(removed) == len(encoded_cases)
    assert summary["drops"].get("undecodable", 0) >= 1
    assert {r["drop_reason"] for r in removed} <= {"undecodable", "empty_text"}
    assert {r["lang"] for r in kept} >= {"ja", "zh", "en"}
