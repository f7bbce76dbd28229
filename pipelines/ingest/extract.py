"""HTML bytes -> Unicode -> main text.

Decoding follows what browsers do: a declared charset wins (HTTP header, then
``<meta charset>``), decoded with replacement characters; without one, strict
UTF-8, then the uchardet-based detector of resiliparse. A result that is
mostly replacement characters is binary junk served as HTML: undecodable.

Main-text extraction sits behind a small interface so the extractor is a
params choice (``ingest.extractor``): ``guarded`` (default: resiliparse's main-content heuristics,
boilerplate rules that can never remove the bulk of a page, a link-density line filter and a fallback
for pages those heuristics empty; see boilerplate.py), ``resiliparse`` (the former default: resiliparse
plus unguarded name rules), ``resiliparse_raw`` (its heuristics alone) or ``trafilatura``.
"""
from __future__ import annotations

import codecs
import re
from typing import Protocol

# More than this share of U+FFFD after decoding means the bytes were not text.
MAX_REPLACEMENT_RATIO = 0.1
# HTML parsers take quadratic time on deep nesting (resiliparse: 10k nested <div> ~ 8 s, 100k: minutes), so a
# hostile page could stall a shard; deeper pages are dropped as extract_error before parsing.
MAX_NESTING_DEPTH = 2000
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
# Elements that never nest (void) or whose end tag is optional: not counted as depth.
_FLAT_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr "
                       "p li dt dd option optgroup tr td th thead tbody tfoot colgroup rb rt rp".split())
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
_META_SCAN_BYTES = 4096


class UndecodableError(ValueError):
    pass


def _codec(label: str | None) -> str | None:
    """A Python codec for a charset label, WHATWG-mapped (latin1 -> cp1252); None if unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    try:
        codecs.lookup(label)
    except LookupError:
        return None
    from resiliparse.parse.encoding import map_encoding_to_html5

    mapped = map_encoding_to_html5(label)
    try:
        codecs.lookup(mapped)
        return mapped
    except LookupError:
        return label


def meta_charset(body: bytes) -> str | None:
    m = _META_CHARSET.search(body[:_META_SCAN_BYTES])
    return m.group(1).decode("ascii", "ignore") if m else None


def _checked(text: str) -> str:
    if text and text.count("\ufffd") > MAX_REPLACEMENT_RATIO * len(text):
        raise UndecodableError(f"{text.count(chr(0xFFFD))} of {len(text)} characters undecodable")
    if text and text.count("\x00") > MAX_REPLACEMENT_RATIO * len(text):
        raise UndecodableError(f"{text.count(chr(0))} of {len(text)} characters are NUL (binary or a wrong encoding)")
    return text


def sniff_utf16(body: bytes, sample: int = 4096) -> str | None:
    """``utf-16-le``/``-be`` when one byte of each pair is mostly NUL (ASCII-range markup in UTF-16), else None."""
    head = body[:sample]
    pairs = len(head) // 2
    if pairs < 16:
        return None
    even_nul, odd_nul = head[0::2].count(0) / pairs, head[1::2].count(0) / pairs
    if odd_nul > 0.3 and even_nul < 0.05:
        return "utf-16-le"
    if even_nul > 0.3 and odd_nul < 0.05:
        return "utf-16-be"
    return None


def decode_html(body: bytes, http_charset: str | None) -> str:
    """Decode an HTML body; raises ``UndecodableError`` for binary junk."""
    for bom, encoding in _BOMS:  # a byte-order mark wins over any declaration (WHATWG) and is not text
        if body.startswith(bom):
            return _checked(body[len(bom):].decode(encoding, errors="replace"))
    sniffed = sniff_utf16(body)
    if sniffed:  # UTF-16 without a BOM is valid "UTF-8" full of NULs: trust the byte pattern over any label
        return _checked(body.decode(sniffed, errors="replace"))
    declared = _codec(http_charset) or _codec(meta_charset(body))
    if declared:
        return _checked(body.decode(declared, errors="replace"))
    return decode_text(body)


def decode_text(data: bytes) -> str:
    """Undeclared bytes: UTF-8 (BOM stripped) if valid, else the detected encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from resiliparse.parse.encoding import detect_encoding

    encoding = _codec(detect_encoding(data)) or "utf-8"
    return _checked(data.decode(encoding, errors="replace"))


def check_nesting(html: str, limit: int = MAX_NESTING_DEPTH) -> None:
    """Raise ``ValueError`` when open elements nest deeper than ``limit`` (an approximate, linear-time scan)."""
    # Depth never exceeds the number of opening tags, at most count("<") - count("</"): most pages stop here.
    if html.count("<") - html.count("</") <= limit:
        return
    depth = 0
    for closing, name in _TAG.findall(html):
        if name.lower() in _FLAT_TAGS:
            continue
        if closing:
            depth = depth - 1 if depth else 0
        else:
            depth += 1
            if depth > limit:
                raise ValueError(f"HTML nesting deeper than {limit} elements")


class Extractor(Protocol):
    name: str

    def extract(self, html: str, url: str | None) -> str:
        """Main text of a page ('' when there is none)."""


# The former default (extractor ``resiliparse``), kept for comparison: boilerplate pruning around resiliparse's
# main-content heuristics by lexbor CSS selectors (page furniture tags, the <h1> title, blocks whose class or id
# contains comment, caption, date, author, share, cookie ...). Chosen on the article-extraction benchmark, and
# unguarded: on other pages a rule that hits the main container empties the page (a ``cookies-policy`` page,
# Blogger's ``date-outer`` post wrappers, a container named ``share``). ``guarded`` (boilerplate.py) replaces it.
BOILERPLATE_TAGS = ("h1", "footer")
BOILERPLATE_NAMES = ("comment", "caption", "date", "author", "byline", "newsletter", "subscri", "share",
                     "promo", "cookie", "popup")
_CONTAINERS = ":not(html):not(body):not(main):not(article)"


def boilerplate_selectors(tags=BOILERPLATE_TAGS, names=BOILERPLATE_NAMES) -> list[str]:
    """CSS selectors of the elements skipped by ``ResiliparseExtractor`` (case-insensitive substrings)."""
    return list(tags) + [f"[{attr}*={name} i]{_CONTAINERS}" for name in names for attr in ("class", "id")]


class ResiliparseExtractor:
    name = "resiliparse"

    def __init__(self, prune_boilerplate: bool = True):
        self.skip = boilerplate_selectors() if prune_boilerplate else []

    def extract(self, html: str, url: str | None) -> str:
        from resiliparse.extract.html2text import extract_plain_text

        check_nesting(html)
        # alt_texts=False: image alt texts are captions/boilerplate, not main text.
        return extract_plain_text(html, main_content=True, alt_texts=False, skip_elements=self.skip)


class ResiliparseRawExtractor(ResiliparseExtractor):
    """resiliparse's main-content heuristics alone, without the boilerplate pruning (for comparison)."""

    name = "resiliparse_raw"

    def __init__(self):
        super().__init__(prune_boilerplate=False)


class TrafilaturaExtractor:
    name = "trafilatura"

    def extract(self, html: str, url: str | None) -> str:
        import trafilatura

        check_nesting(html)
        # deduplicate=False: no cross-document cache, so output does not depend on record order.
        return trafilatura.extract(html, url=url, include_comments=False, include_tables=True,
                                   deduplicate=False, output_format="txt") or ""


# Imported here, after the names it uses, because boilerplate.py builds on this module.
from pipelines.ingest.boilerplate import GuardedExtractor  # noqa: E402

EXTRACTORS = {e.name: e for e in (GuardedExtractor, ResiliparseExtractor, ResiliparseRawExtractor,
                                  TrafilaturaExtractor)}
# What ingest.extractor means when params leave it out (params.yaml sets it explicitly).
DEFAULT_EXTRACTOR = GuardedExtractor.name


def get_extractor(name: str) -> Extractor:
    try:
        return EXTRACTORS[name]()
    except KeyError:
        raise ValueError(f"ingest.extractor: unknown extractor {name!r} (choose from {sorted(EXTRACTORS)})") from None
