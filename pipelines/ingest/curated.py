"""Readers for curated sources (``params.ingest.curated``), one input file at a time.

Kinds:
- ``wikipedia_xml``: a MediaWiki XML export (plain, .bz2 or .gz), streamed with
  iterparse. Redirects and pages outside the article namespace are skipped;
  wikitext becomes plain text with mwparserfromhell. Key: page id.
- ``text_file``: the whole file is one record. Key: file name.
- ``lines``: one record per non-empty line. Key: ``<file name>:<line number>``.
- ``jsonl`` (plain or .gz): text = the listed ``fields`` (dotted paths) joined by
  a blank line; optional ``url_field`` / ``date_field`` (dotted paths).
  Key: ``<file name>:<line number>``.

Offsets are byte offsets in the decompressed file where one exists (null for
Wikipedia pages, whose position in a bz2 stream has no use).
"""
from __future__ import annotations

import bz2
import gzip
import json
import re
import xml.etree.ElementTree as ET
from typing import BinaryIO, Callable, Iterator
from urllib.parse import quote

from pipelines.ingest.extract import UndecodableError, decode_text
from pipelines.ingest.items import Candidate, Skipped, dropped, with_text

KINDS = ("wikipedia_xml", "text_file", "lines", "jsonl")
_BLANK_RUNS = re.compile(r"\n{3,}")
_SPACE_RUNS = re.compile(r"[ \t]{2,}")
# Wikilinks to media and categories carry captions/markup, not article prose.
_NON_PROSE_LINKS = ("file:", "image:", "media:", "category:")
_NON_PROSE_TAGS = ("ref", "references", "gallery", "math", "score", "timeline", "syntaxhighlight")


def decompressed(stream: BinaryIO) -> BinaryIO:
    """Transparent gzip/bz2 by magic bytes (not by file name: S3 keys lie less, magic never)."""
    head = stream.peek(3)[:3] if hasattr(stream, "peek") else b""
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head == b"BZh":
        return bz2.BZ2File(stream, mode="rb")
    return stream


def _dotted(obj, path: str):
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------- text_file / lines / jsonl


def read_text_file(stream: BinaryIO, name: str, cfg: dict, max_bytes: int, min_chars: int) -> Iterator[Candidate]:
    data = decompressed(stream).read(max_bytes + 1)
    cand = Candidate(key=name, offset=0, bytes_in=len(data))
    if len(data) > max_bytes:
        yield dropped(cand, "too_large", bytes=f">{max_bytes}")
        return
    try:
        yield with_text(cand, decode_text(data), min_chars)
    except UndecodableError as e:
        yield dropped(cand, "undecodable", error=str(e))


def _lines(stream: BinaryIO, name: str, max_bytes: int) -> Iterator[tuple[Candidate | Skipped, bytes | None]]:
    """Per line of a possibly compressed stream: a candidate and its raw bytes, or (a skip or a drop, None)."""
    offset = 0
    for number, raw in enumerate(decompressed(stream), start=1):
        if not raw.strip():
            yield Skipped("blank_line"), None
        else:
            cand = Candidate(key=f"{name}:{number}", offset=offset, bytes_in=len(raw))
            yield (dropped(cand, "too_large", bytes=len(raw)), None) if len(raw) > max_bytes else (cand, raw)
        offset += len(raw)


def read_lines(stream: BinaryIO, name: str, cfg: dict, max_bytes: int, min_chars: int) -> Iterator[Candidate | Skipped]:
    for cand, raw in _lines(stream, name, max_bytes):
        if raw is None:
            yield cand
            continue
        try:
            yield with_text(cand, raw.decode("utf-8"), min_chars)
        except UnicodeDecodeError as e:
            yield dropped(cand, "undecodable", error=str(e)[:200])


def read_jsonl(stream: BinaryIO, name: str, cfg: dict, max_bytes: int, min_chars: int) -> Iterator[Candidate | Skipped]:
    fields = cfg.get("fields") or ["text"]
    url_field, date_field = cfg.get("url_field"), cfg.get("date_field")
    for cand, raw in _lines(stream, name, max_bytes):
        if raw is None:
            yield cand
            continue
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            yield dropped(cand, "malformed", error=str(e)[:200])
            continue
        if not isinstance(obj, dict):
            yield dropped(cand, "malformed", error=f"line is a JSON {type(obj).__name__}, not an object")
            continue
        if url_field:
            cand.url = _as_text(_dotted(obj, url_field)) or None
        if date_field:
            cand.crawl_date = _as_text(_dotted(obj, date_field))[:10] or None
        parts = [_as_text(_dotted(obj, f)).strip() for f in fields]
        yield with_text(cand, "\n\n".join(p for p in parts if p), min_chars)


# ---------------------------------------------------------------- wikipedia_xml


def wikitext_to_text(wikitext: str) -> str:
    import mwparserfromhell
    from mwparserfromhell.nodes import Tag, Wikilink

    code = mwparserfromhell.parse(wikitext)
    # One pass over the top level (where media links, categories and refs sit): removing
    # nodes one by one with Wikicode.remove searches the whole tree each time.
    code.nodes = [n for n in code.nodes if not _non_prose(n, Tag, Wikilink)]
    text = code.strip_code(normalize=True, collapse=True)
    # Removed templates leave double spaces and padded headings behind.
    text = "\n".join(_SPACE_RUNS.sub(" ", line).strip() for line in text.splitlines())
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _non_prose(node, Tag, Wikilink) -> bool:
    if isinstance(node, Wikilink):
        return str(node.title).strip().lower().startswith(_NON_PROSE_LINKS)
    if isinstance(node, Tag):
        return str(node.tag).strip().lower() in _NON_PROSE_TAGS
    return False


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return child.text
    return None


def read_wikipedia_xml(stream: BinaryIO, name: str, cfg: dict, max_bytes: int, min_chars: int) -> Iterator[Candidate | Skipped]:
    base = "https://en.wikipedia.org/wiki/"
    root = None
    for event, elem in ET.iterparse(decompressed(stream), events=("start", "end")):
        if event == "start":
            if root is None:
                root = elem
            continue
        tag = _local(elem.tag)
        if tag == "base" and elem.text and "/wiki/" in elem.text:
            base = elem.text.split("/wiki/", 1)[0] + "/wiki/"  # siteinfo: other languages and wikis
        elif tag == "page":
            yield _page(elem, base, max_bytes, min_chars)
            root.clear()  # keep memory flat over a multi-GB dump


def _page(page, base: str, max_bytes: int, min_chars: int) -> Candidate | Skipped:
    if any(_local(c.tag) == "redirect" for c in page):
        return Skipped("redirect")
    if (_child_text(page, "ns") or "0").strip() != "0":
        return Skipped("namespace")
    title = (_child_text(page, "title") or "").strip()
    revision = next((c for c in page if _local(c.tag) == "revision"), None)
    wikitext = (_child_text(revision, "text") if revision is not None else None) or ""
    if wikitext.lstrip().upper().startswith("#REDIRECT"):
        return Skipped("redirect")
    cand = Candidate(key=(_child_text(page, "id") or title).strip(),
                     url=base + quote(title.replace(" ", "_"), safe="/:()_,'-.!~*"),
                     bytes_in=len(wikitext.encode("utf-8")))
    if cand.bytes_in > max_bytes:
        return dropped(cand, "too_large", bytes=cand.bytes_in)
    return with_text(cand, wikitext_to_text(wikitext), min_chars)


READERS: dict[str, Callable[..., Iterator[Candidate | Skipped]]] = {
    "wikipedia_xml": read_wikipedia_xml,
    "text_file": read_text_file,
    "lines": read_lines,
    "jsonl": read_jsonl,
}
