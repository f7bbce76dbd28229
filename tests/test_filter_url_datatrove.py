"""Our URL blocklist rule makes datatrove 0.10.1 URLFilter's keep/drop decision, with the same reason.

Both read the same lists (the shipped ``pipelines/filter/url_lists``), on real URLs (the WARC samples and
the Common Crawl jsonl sample) and on URLs built to hit every list entry kind: listed registered domains,
listed hosts under a public suffix (subdomain rule), mixed-case hosts, exact URLs, hard / soft banned
words, banned subwords. datatrove's tldextract is pointed at the bundled public-suffix snapshot, as ours
is (no network here).
"""
from __future__ import annotations

import glob

import pytest

from pipelines.filter.rules import Doc
from pipelines.filter.url_filter import LISTS_DIR, URLFilterRule, read_list
from tests.fixtures.project import REPO
from tests.fixtures.real_text import web_docs

pytest.importorskip("datatrove")
pytest.importorskip("ahocorasick")
pytest.importorskip("tldextract")

EXACT_URLS = ["http://blocked.example.net/exact/page.html", "https://shop.example.org/listed?id=7"]


def _lines(name: str) -> list[str]:
    return [ln for ln in (LISTS_DIR / name).read_text(encoding="utf-8").splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def filters():
    from datatrove.pipeline.filters import URLFilter
    from tldextract import TLDExtract

    # datatrove's __new__ checks its dependencies, fasteners included (not installed): it only locks the
    # download of datatrove's integrated lists, unused here. So build the step without that check.
    theirs = object.__new__(URLFilter)
    URLFilter.__init__(theirs, use_integrated_lists=False, extra_domains=_lines("domains.txt"),
                       extra_urls=EXACT_URLS, banned_words=_lines("banned_words.txt"),
                       banned_subwords=_lines("banned_subwords.txt"), soft_banned_words=_lines("soft_banned_words.txt"))
    theirs.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)  # offline: the bundled snapshot
    ours = URLFilterRule(extra_urls=EXACT_URLS)
    return ours, theirs


def _sample_urls() -> list[str]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    urls = [d["url"] for d in web_docs()]
    for path in sorted(glob.glob(str(REPO / "samples" / "warc" / "*.warc.gz"))):
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh, record_types=WarcRecordType.response, parse_http=False):
                urls.append(rec.headers.get("WARC-Target-URI"))
    return [u for u in urls if u]


def _constructed_urls() -> list[str]:
    domains = sorted(read_list(LISTS_DIR / "domains.txt", False))
    words = sorted(read_list(LISTS_DIR / "banned_words.txt", True))
    soft = sorted(read_list(LISTS_DIR / "soft_banned_words.txt", True))
    subwords = sorted(read_list(LISTS_DIR / "banned_subwords.txt", True))
    urls = []
    for d in domains:
        # Bare, with www., deep under a listed host (kept by datatrove unless its registered domain is
        # listed), mixed case (datatrove compares hosts as written), with a port and credentials.
        urls += [f"http://{d}/", f"https://www.{d}/a/b?c=d", f"http://x.y.{d}/", f"http://{d.upper()}/p",
                 f"https://user@{d}:8443/q"]
    for w in words:
        urls += [f"http://example.com/{w}/page", f"http://example.com/a-{w.upper()}-b", f"http://example.com/pre{w}post"]
    for a, b in zip(soft, soft[1:] + soft[:1]):
        urls += [f"http://example.com/{a}/x.html", f"http://example.com/{a}_{b}.html"]
    for s in subwords:
        urls += [f"http://example.com/x{s.replace(' ', '-')}y", f"http://{s.replace(' ', '')}.example.com/"]
    urls += EXACT_URLS + [u + "/" for u in EXACT_URLS]
    urls += ["http://[::1]/x", "http://127.0.0.1:8080/a", "mailto:someone@example.com", "http://", "localhost/x",
             "http://exa mple.com/%20x", "https://example.co.uk./trailing-dot"]
    return urls


def _theirs(flt, url: str) -> str | None:
    from datatrove.data import Document

    out = flt.filter(Document(text="t", id="x", metadata={"url": url}))
    return None if out is True else out[1]


def test_url_rule_decides_like_datatrove(filters):
    ours, theirs = filters
    urls = list(dict.fromkeys(_sample_urls() + _constructed_urls()))
    assert len(urls) > 2000
    mismatches, reasons = [], {}
    for url in urls:
        ok, detail = ours.check(Doc("t", url=url))
        mine = None if ok else detail["check"]
        dt = _theirs(theirs, url)
        reasons[dt] = reasons.get(dt, 0) + 1
        if mine != dt:
            mismatches.append((url, mine, dt))
    assert not mismatches, mismatches[:20]
    # The URLs exercise every way to be dropped, and most real URLs are kept.
    assert set(reasons) >= {None, "domain", "subdomain", "url", "hard_blacklisted", "soft_blacklisted",
                            "blacklisted_subword"}, reasons
