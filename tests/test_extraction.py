"""Main-text extraction: the default extractor never lets a boilerplate rule empty a page, falls back when
resiliparse's heuristics keep too little, drops link-dense lines; the snippet benchmark file is sound."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_extraction as bench
from pipelines.ingest import boilerplate
from pipelines.ingest.extract import DEFAULT_EXTRACTOR, EXTRACTORS, get_extractor

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "The committee met on Tuesday and agreed on the budget for the coming year after a long debate."
BODY = "<p>" + " ".join([SENTENCE] * 4) + "</p>"

# Pages of the kinds that the former name rules emptied (issue 15): the main container's class/id matches a rule.
COOKIE_POLICY = f"""<html><body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
<div id="cookie-policy" class="cookie-policy"><h1>Cookie policy</h1>{BODY * 3}</div>
<div id="cookie-banner">We use cookies to improve your experience. <a href="/ok">Accept</a></div>
</body></html>"""
BLOGGER = "<html><body><div class='blog-posts'>" + "".join(
    f"""<div class="date-outer"><h2 class="date-header"><span>Monday, May {i}, 2019</span></h2>
    <div class="date-posts"><div class="post-outer"><h3 class="post-title">Post number {i}</h3>
    <div class="post-body">{BODY}</div></div></div></div>""" for i in range(1, 8)) + "</div></body></html>"
SHARE_CONTAINER = f"""<html><body><div class="share-container"><h1>Title</h1>{BODY * 2}
<div class="share-buttons"><a href="/fb">Share on Facebook</a> <a href="/tw">Tweet this</a></div>
</div></body></html>"""
# Pages that resiliparse's own main-content heuristics empty: a JavaScript-revealed (hidden) wrapper, and
# content that is one top-level list.
HIDDEN_WRAPPER = f"""<html><body><div id="page" style="display:none">{BODY * 2}</div></body></html>"""
TOP_LEVEL_LIST = "<html><body><ul>" + "".join(
    f"<li>Fact {i}: {SENTENCE}</li>" for i in range(8)) + "</ul></body></html>"


@pytest.fixture(scope="module")
def default():
    return get_extractor(DEFAULT_EXTRACTOR)


@pytest.fixture
def no_trafilatura(monkeypatch):
    """The guard itself must keep the page, not the last-resort fallback to trafilatura."""
    def refuse(self, html, url):
        raise AssertionError("fell back to trafilatura")
    monkeypatch.setattr("pipelines.ingest.extract.TrafilaturaExtractor.extract", refuse)


def test_default_extractor_is_the_guarded_one():
    assert DEFAULT_EXTRACTOR == "guarded" and "guarded" in EXTRACTORS


@pytest.mark.parametrize("html", [COOKIE_POLICY, BLOGGER, SHARE_CONTAINER], ids=["cookie", "date", "share"])
def test_a_rule_matching_the_main_container_does_not_empty_the_page(html, default, no_trafilatura):
    # The fixtures do trigger the rules: the former default (unguarded name rules) empties every one of them.
    assert get_extractor("resiliparse").extract(html, None) == ""
    text = default.extract(html, None)
    assert text.count(SENTENCE) >= 4


def test_small_widgets_inside_a_kept_container_still_go(default, no_trafilatura):
    cookie = default.extract(COOKIE_POLICY, None)
    assert "Cookie policy" in cookie and "We use cookies" not in cookie  # the banner, not the policy
    blog = default.extract(BLOGGER, None)
    assert all(f"Post number {i}" in blog for i in range(1, 8)) and blog.count(SENTENCE) == 28
    assert "Monday, May" not in blog  # the date headers, each a small widget, are removed
    share = default.extract(SHARE_CONTAINER, None)
    assert "Share on Facebook" not in share and "Tweet this" not in share


def test_elements_of_one_name_that_together_hold_the_page_are_kept(no_trafilatura):
    # Seven short posts, each under the widget size and under the share cap alone, together the whole page.
    tree_html = BLOGGER.replace("date-outer", "post-date")  # still a widget name ("date")
    text = get_extractor(DEFAULT_EXTRACTOR).extract(tree_html, None)
    assert text.count(SENTENCE) == 28


@pytest.mark.parametrize("html", [HIDDEN_WRAPPER, TOP_LEVEL_LIST], ids=["hidden-wrapper", "top-level-list"])
def test_falls_back_to_the_whole_body_when_resiliparse_keeps_too_little(html, default, no_trafilatura):
    assert get_extractor("resiliparse_raw").extract(html, None) == ""  # resiliparse's heuristics empty it
    assert default.extract(html, None).count(SENTENCE) >= 2


def test_falls_back_to_trafilatura_when_the_whole_body_is_still_empty(monkeypatch, default):
    # Three asides, each under the share cap, so every one is removed: both resiliparse passes come out empty.
    html = "<html><body>" + "".join(f"<aside>{BODY}</aside>" for _ in range(3)) + "</body></html>"
    calls = []
    monkeypatch.setattr("pipelines.ingest.extract.TrafilaturaExtractor.extract",
                        lambda self, h, url: calls.append(url) or "from trafilatura")
    assert default.extract(html, "http://x.example/") == "from trafilatura"
    assert calls == ["http://x.example/"]
    calls.clear()
    assert default.extract(COOKIE_POLICY, None) and calls == []  # a normal page never pays for trafilatura


def test_link_dense_lines_go_and_linked_sentences_stay(default, no_trafilatura):
    html = f"""<html><body><div><a href="/">Home</a> | <a href="/news">News</a> | <a href="/sport">Sport</a> |
    <a href="/contact">Contact us</a></div>{BODY}
    <p>Escopete is a <a href="/m">municipality</a> in the <a href="/p">province of Guadalajara</a>, in the
    <a href="/c">autonomous community</a> of <a href="/cm">Castilla-La Mancha</a>, Spain.</p>
    <p>© 2024 Example Media Group. All rights reserved.</p></body></html>"""
    text = default.extract(html, None)
    assert SENTENCE in text and "Escopete is a municipality in the province of Guadalajara" in text
    assert "Contact us" not in text and "All rights reserved" not in text
    assert "\x02" not in text and "\x03" not in text  # link markers never leak


def test_furniture_names_are_matched_at_word_boundaries():
    fw = boilerplate.furniture_word
    assert fw("site-footer") == "footer" and fw("comments-area") == "comments" and fw("postDate") == "date"
    assert fw("share-buttons") == "share" and fw("date-outer") == "date"
    assert fw("update") is None and fw("commentary") is None and fw("shadow") is None
    assert fw("nav-item") is None and fw("menu-item-type-page") is None  # items inside furniture


def test_snippet_scoring_ignores_whitespace_and_case():
    entry = {"must_contain": ["Hello  World.", "missing"], "must_not_contain": ["Menu", "Footer"]}
    assert bench.score_snippets("hello\nworld. menu", entry) == (0.5, 0.5)
    assert bench.score_snippets("", entry) == (0.0, 1.0)
    assert bench.score_snippets("x", {"must_contain": ["x"], "must_not_contain": []}) == (1.0, None)


def test_snippet_benchmark_file_is_well_formed_and_names_real_sample_pages():
    doc = json.loads(bench.SNIPPETS.read_text(encoding="utf-8"))
    pages = doc["pages"]
    assert 40 <= len(pages) <= 80
    assert len({p["lang"] for p in pages}) >= 5
    assert len({(p["warc"], p["record_id"]) for p in pages}) == len(pages)  # no page twice
    for p in pages:
        assert set(p) >= {"warc", "record_id", "url", "lang", "must_contain", "must_not_contain"}, p.get("url")
        assert p["warc"].startswith("samples/warc/") and (ROOT / p["warc"]).is_file(), p["warc"]
        assert p["must_contain"] and all(isinstance(s, str) and s.strip() for s in p["must_contain"])
        assert all(isinstance(s, str) and s.strip() for s in p["must_not_contain"])
    # Every page exists in the samples (the loader raises otherwise), and every snippet, wanted or not, is on
    # its page: a snippet that is not there would score as found-absent for free.
    from resiliparse.extract.html2text import extract_plain_text

    loaded = bench.load_snippet_pages()
    assert len(loaded) == len(pages)
    for entry, html in loaded:
        visible = bench.squash(extract_plain_text(html, main_content=False, alt_texts=False))
        for snippet in entry["must_contain"] + entry["must_not_contain"]:
            assert bench.squash(snippet) in visible, (entry["url"], snippet)
    assert bench.SNIPPETS.stat().st_size < 100_000  # snippets only, no page HTML


def test_the_short_tail_after_the_last_copyright_line_is_footer(default, no_trafilatura):
    footer = f"""<html><body><div>{BODY * 3}</div><div><p>© 2020 Example Trading Co., Ltd.</p>
    <p>Head office: 589 Quwu Road, Minhang District, Shanghai</p><p>Phone: 021-54098575 Fax: 021-54098577</p>
    </div></body></html>"""
    text = default.extract(footer, None)
    assert text.count(SENTENCE) == 12 and "Head office" not in text and "Phone:" not in text
    # A copyright line followed by much more text is not the footer: nothing after it is cut.
    long_tail = f"""<html><body><div><p>Photo © 2020 Example Agency</p>{BODY * 3}</div></body></html>"""
    assert default.extract(long_tail, None).count(SENTENCE) == 12


def test_unquoted_class_and_id_values_of_minified_pages_are_read():
    html = ("<body>" + "".join(f"<p class=c{i}>x</p>" for i in range(8))
            + '<div id=license>This website is licensed under CC BY 4.0</div><div class="a b">y</div></body>')
    selector = boilerplate.PageNames(html).selector(boilerplate.FIRST_PASS_WORDS)
    assert selector == '[id="license"]'
