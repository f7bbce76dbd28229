"""URL blocklist rule with datatrove 0.10.1 URLFilter's semantics (same lists, same decisions).

A record is dropped when the URL's registered domain (public-suffix aware, tldextract) is
listed (``domain``), or its full host is (``subdomain``), its exact URL is listed (``url``),
a banned word is one of the URL's alphanumeric runs (``hard_blacklisted``; case-sensitive,
as in datatrove), at least ``soft_word_threshold`` soft-banned words are
(``soft_blacklisted``), or a banned subword occurs in the URL stripped to lowercase
alphanumerics (``blacklisted_subword``). Lists are one entry per line; lines starting with
``#`` are comments (datatrove's rule, so its ``#xx`` word entries are skipped too).
Hosts are compared as written, like datatrove (Common Crawl URLs have lowercase hosts).

tldextract runs offline on the public-suffix snapshot bundled with the package (no fetch,
no cache writes): decisions do not depend on the network or on the day.
``tests/test_filter_url_datatrove.py`` checks the decisions against datatrove's URLFilter.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pipelines.config import resolve

LISTS_DIR = Path(__file__).with_name("url_lists")
CODE_ROOT = Path(__file__).resolve().parents[2]
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


def normalize(text: str) -> str:
    return _NON_ALNUM.sub("", text).lower()


def read_list(path: str | Path, do_normalize: bool) -> set[str]:
    """Entries of a list file; a relative path is looked up in the workspace, then in the code checkout
    (the shipped lists live next to this module)."""
    p = Path(path)
    if not p.is_absolute():
        p = next((c for c in (resolve(path), CODE_ROOT / path) if c.exists()), resolve(path))
    if not p.exists():
        raise FileNotFoundError(f"filter.url_filter: list file {path} not found")
    out = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        out.add(normalize(line) if do_normalize else line.strip())
    return out


@lru_cache(maxsize=1)
def _tld_extract():
    from tldextract import TLDExtract

    return TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled snapshot: offline and reproducible


class URLFilterRule:
    name = "url_filter"

    def __init__(self, domains_file: str | None = str(LISTS_DIR / "domains.txt"), urls_file: str | None = None,
                 banned_words_file: str | None = str(LISTS_DIR / "banned_words.txt"),
                 soft_banned_words_file: str | None = str(LISTS_DIR / "soft_banned_words.txt"),
                 banned_subwords_file: str | None = str(LISTS_DIR / "banned_subwords.txt"),
                 soft_word_threshold: int = 2, extra_domains=(), extra_urls=(), extra_banned_words=()):
        self.domains = (read_list(domains_file, False) if domains_file else set()) | {d.strip().lower() for d in extra_domains}
        self.urls = (read_list(urls_file, False) if urls_file else set()) | set(extra_urls)
        self.banned_words = (read_list(banned_words_file, True) if banned_words_file else set()) | {normalize(w) for w in extra_banned_words}
        self.soft_banned_words = read_list(soft_banned_words_file, True) if soft_banned_words_file else set()
        self.banned_subwords = sorted(read_list(banned_subwords_file, True) if banned_subwords_file else set())
        self.soft_word_threshold = int(soft_word_threshold)
        # One alternation scans the URL once for all subwords (the job of datatrove's Aho-Corasick automaton).
        self._subword_re = re.compile("|".join(map(re.escape, self.banned_subwords))) if self.banned_subwords else None

    def check(self, doc) -> tuple[bool, dict]:
        url = doc.url
        if not url:
            return True, {}
        info = _tld_extract()(url)
        if info.top_domain_under_public_suffix in self.domains:
            return False, {"check": "domain", "value": info.top_domain_under_public_suffix}
        if info.fqdn in self.domains:
            return False, {"check": "subdomain", "value": info.fqdn}
        if url in self.urls:
            return False, {"check": "url", "value": url}
        url_words = set(_NON_ALNUM.split(url))
        hard = sorted(url_words & self.banned_words)
        if hard:
            return False, {"check": "hard_blacklisted", "value": hard[0]}
        soft = sorted(url_words & self.soft_banned_words)
        if len(soft) >= self.soft_word_threshold:
            return False, {"check": "soft_blacklisted", "value": len(soft)}
        if self._subword_re is not None:
            m = self._subword_re.search(normalize(url))
            if m:
                return False, {"check": "blacklisted_subword", "value": m.group(0)}
        return True, {}
