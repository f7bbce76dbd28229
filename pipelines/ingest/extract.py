"""HTML bytes -> Unicode -> main text.

Decoding follows what browsers do: a declared charset wins (HTTP header, then
``<meta charset>``), decoded with replacement characters; without one, strict
UTF-8, then the uchardet-based detector of resiliparse. A result that is
mostly replacement characters is binary junk served as HTML: undecodable.

Main-text extraction sits behind a small interface so the extractor is a
params choice (``ingest.extractor``): resiliparse (fast, default) or trafilatura.
"""
from __future__ import annotations

import codecs
import re
from typing import Protocol

# More than this share of U+FFFD after decoding means the bytes were not text.
MAX_REPLACEMENT_RATIO = 0.1
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
    return text


def decode_html(body: bytes, http_charset: str | None) -> str:
    """Decode an HTML body; raises ``UndecodableError`` for binary junk."""
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


class Extractor(Protocol):
    name: str

    def extract(self, html: str, url: str | None) -> str:
        """Main text of a page ('' when there is none)."""


class ResiliparseExtractor:
    name = "resiliparse"

    def extract(self, html: str, url: str | None) -> str:
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(html, main_content=True)


class TrafilaturaExtractor:
    name = "trafilatura"

    def extract(self, html: str, url: str | None) -> str:
        import trafilatura

        # deduplicate=False: no cross-document cache, so output does not depend on record order.
        return trafilatura.extract(html, url=url, include_comments=False, include_tables=True,
                                   deduplicate=False, output_format="txt") or ""


EXTRACTORS = {e.name: e for e in (ResiliparseExtractor, TrafilaturaExtractor)}


def get_extractor(name: str) -> Extractor:
    try:
        return EXTRACTORS[name]()
    except KeyError:
        raise ValueError(f"ingest.extractor: unknown extractor {name!r} (choose from {sorted(EXTRACTORS)})") from None
