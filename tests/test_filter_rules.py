"""C4, FineWeb and URL-blocklist rules: the same keep/drop decisions (and the same C4-rewritten text)
as datatrove 0.10.1's C4QualityFilter / FineWebQualityFilter on 200 real web documents, the sentence
counter equal to spaCy's sentencizer, and the URL rule on real and constructed URLs."""
from __future__ import annotations

from collections import Counter

import pytest

from pipelines.config import load_params
from pipelines.filter.rules import C4QualityRule, Doc, FineWebQualityRule, build_rules
from pipelines.filter.url_filter import LISTS_DIR, URLFilterRule, read_list
from tests.fixtures.project import REPO
from tests.fixtures.real_text import web_docs


@pytest.fixture(scope="module")
def web():
    return web_docs()


def _verdict(result):
    return (True, None) if result is True else (False, result[1])


def _ours(rule, doc):
    ok, detail = rule.check(doc)
    return ok, detail.get("check")


def test_c4_then_fineweb_decide_and_rewrite_exactly_as_datatrove(web):
    pytest.importorskip("spacy")
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter

    theirs_c4, theirs_fw = C4QualityFilter(), FineWebQualityFilter()
    ours_c4, ours_fw = C4QualityRule(), FineWebQualityRule()
    mismatches, seen = [], Counter()
    for i, d in enumerate(web[:200]):
        # FineWeb alone on the raw text (exercises its line checks), then the chain C4 -> FineWeb.
        raw_theirs = _verdict(theirs_fw.filter(Document(text=d["text"], id=str(i))))
        raw_ours = _ours(ours_fw, Doc(d["text"]))
        doc_t, doc_o = Document(text=d["text"], id=str(i)), Doc(d["text"])
        c4_t, c4_o = _verdict(theirs_c4.filter(doc_t)), _ours(ours_c4, doc_o)
        fw_t = _verdict(theirs_fw.filter(doc_t)) if c4_t[0] else None
        fw_o = _ours(ours_fw, doc_o) if c4_o[0] else None
        seen.update([("fw_raw", raw_theirs), ("c4", c4_t), ("fw", fw_t)])
        if (raw_ours, c4_o, fw_o) != (raw_theirs, c4_t, fw_t) or (c4_t[0] and doc_o.text != doc_t.text):
            mismatches.append((i, (raw_ours, c4_o, fw_o), (raw_theirs, c4_t, fw_t)))
    assert mismatches == []
    # The sample exercises several sub-checks of each rule, drops and keeps.
    assert {k for k in seen if k[0] == "fw_raw" and not k[1][0]} >= {
        ("fw_raw", (False, "line_punct_ratio")), ("fw_raw", (False, "char_dup_ratio"))}
    assert seen[("c4", (True, None))] >= 20 and seen[("c4", (False, "too_few_sentences"))] >= 20


def test_sentence_count_equals_spacy_sentencizer(web):
    spacy = pytest.importorskip("spacy")
    from pipelines.filter.words import count_sentences

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    lines = [ln.strip() for d in web[:60] for ln in d["text"].splitlines() if ln.strip()]
    lines += ["A.  ) B", "e.g. this. Mr. Smith went.", "Hello world. This is it!  ok", "Wait... what?!  Yes."]
    assert len(lines) > 1000
    assert [count_sentences(ln) for ln in lines] == [len(list(nlp(ln).sents)) for ln in lines]


def test_c4_line_checks_record_removed_lines_and_document_checks():
    rule = C4QualityRule()
    text = "\n".join([
        "Home | About | Contact",                              # no terminal punctuation
        "This site uses cookies to improve your experience.",  # policy
        "Please enable JavaScript to view the comments.",      # javascript
        "Go on.",                                              # too few words
        "The council met on Monday. It approved the budget. Members argued for hours.",
        "Residents were not pleased. Several spoke at the meeting[1]. The vote was close.",
    ])
    doc = Doc(text)
    assert rule.check(doc) == (True, {})
    assert rule.last_line_counts == {"too_long_word": 0, "no_terminal_punc": 1, "too_few_words": 1,
                                     "javascript": 1, "policy": 1}
    assert doc.text.splitlines() == [
        "The council met on Monday. It approved the budget. Members argued for hours.",
        "Residents were not pleased. Several spoke at the meeting. The vote was close.",  # citation cut
    ]
    assert rule.check(Doc(text.replace("Monday.", "Monday. Lorem ipsum dolor sit amet."))) == (
        False, {"check": "lorem_ipsum", "value": 1})
    assert rule.check(Doc(text.replace("budget.", "budget {x}."))) == (False, {"check": "curly_bracket", "value": 1})
    ok, detail = C4QualityRule(min_num_sentences=7).check(Doc(text))
    assert not ok and detail == {"check": "too_few_sentences", "value": 6}
    assert C4QualityRule(min_num_sentences=-1, min_words_per_line=-1).check(Doc("x")) == (True, {})


def test_url_rule_blocks_listed_domains_words_and_subwords(web):
    rule = URLFilterRule()
    domains = sorted(read_list(LISTS_DIR / "domains.txt", False))
    assert len(domains) > 100
    blocked = domains[0]
    cases = {
        f"http://{blocked}/page.html": "domain",
        f"https://www.{blocked}:8080/a?b=1": "domain",  # subdomains of a listed domain
        "http://example.com/2g1c/video": "hard_blacklisted",
        "http://example.com/BABES-ASSHOLE": None,        # banned words match case-sensitively (datatrove)
        "http://example.com/babes/asshole.html": "soft_blacklisted",
        "http://example.com/babes/page.html": None,      # one soft word is below the threshold of 2
        "http://example.com/alabama-hot-pocket": "blacklisted_subword",
    }
    for url, expected in cases.items():
        ok, detail = rule.check(Doc("text", url=url))
        assert (detail.get("check") if not ok else None) == expected, url
    assert URLFilterRule(soft_word_threshold=1).check(Doc("t", url="http://example.com/babes/page.html"))[0] is False
    assert URLFilterRule(extra_urls=["http://a.example/x"]).check(Doc("t", url="http://a.example/x")) == (
        False, {"check": "url", "value": "http://a.example/x"})
    # Real crawl URLs: malformed ones never crash, and the shipped lists keep the ordinary news/blog sample.
    results = [rule.check(Doc("t", url=d["url"])) for d in web] + [rule.check(Doc("t", url=u)) for u in
                                                                    ["http://[::1", "mailto:x", "", "http://"]]
    assert sum(ok for ok, _ in results) >= 0.97 * len(results)


def test_url_rule_lists_are_configurable_and_missing_lists_fail_clearly(tmp_path):
    blocklist = tmp_path / "domains.txt"
    blocklist.write_text("# comment\nnews.example.org\nexample.net\n", encoding="utf-8")
    rule = URLFilterRule(domains_file=str(blocklist), banned_words_file=None, soft_banned_words_file=None,
                         banned_subwords_file=None)
    assert rule.check(Doc("t", url="http://news.example.org/x")) == (False, {"check": "subdomain", "value": "news.example.org"})
    assert rule.check(Doc("t", url="http://a.b.example.net/x")) == (False, {"check": "domain", "value": "example.net"})
    # datatrove semantics: a listed host matches itself, a listed registered domain all its hosts.
    assert rule.check(Doc("t", url="http://a.news.example.org/x"))[0] is True
    assert rule.check(Doc("t", url="http://example.org/2g1c"))[0] is True
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        URLFilterRule(domains_file=str(tmp_path / "nope.txt"))
    section = load_params(REPO / "params.yaml")["filter"]
    section["fineweb_quality"] = {"enabled": False}
    assert "fineweb_quality" not in [r.name for r in build_rules(section)]


def test_fast_word_split_equals_the_exact_pass(web):
    """split() skips the exact (whitespace-token) pass on lines without a special-case merge candidate:
    the words must equal the exact pass's, with newlines, runs of spaces, tabs and merge cases mixed in."""
    from pipelines.filter.words import english_splitter

    splitter = english_splitter()
    texts = [d["text"] for d in web[:150]]
    texts += [t.replace(" ", sep, 40) for t, sep in zip(texts, ["  ", "\t", "\n", " \n ", "\u00a0", "\n\n"] * 25)]
    texts += ["Mr. Smith at 10a.m. :) ok\n  (a) b.\n\nc'mon ... :-)", "a.m. \n:)\t:)", " \n\u2028x.y :-) 8-)"]
    assert sum(splitter._has_merge_candidate(splitter.split(t)) for t in texts) >= 20  # the slow path is exercised
    assert [splitter.split(t) for t in texts] == [splitter._split_exact(t) for t in texts]
