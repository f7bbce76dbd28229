"""The HTTP response head inside a WARC ``response`` record, parsed the way old crawls wrote it.

Lines may end with CRLF or a bare LF (a 2009 crawl wrote bare LF: a strict parser reads the HTML as
headers and loses the page). When the Content-Type is missing or is not a ``type/subtype`` at all,
the body is sniffed for HTML, as a browser would.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(rb"HTTP/\d(?:\.\d)?\s+(\d{3})")
_MIME = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\"';\s]+)", re.IGNORECASE)
_HTML_START = re.compile(rb"<(?:!doctype\s+html|html|head|body|title|meta|script|p|div)[\s>/]")
_MAX_HEAD = 1 << 16  # a head longer than this is not an HTTP head
_SNIFF_BYTES = 1024


@dataclass(frozen=True)
class HttpHead:
    status: int | None
    content_type: str | None  # the mime type, lower case; None when missing or garbled
    charset: str | None
    body_start: int  # where the payload begins in the record block


def parse(block: bytes) -> HttpHead | None:
    """The head of an HTTP response block, or None when the block does not start with one."""
    if not block.startswith(b"HTTP/"):
        return None
    end = _HEAD_END.search(block, 0, _MAX_HEAD)
    head, body_start = (block[:end.start()], end.end()) if end else (block[:_MAX_HEAD], len(block))
    lines = head.split(b"\n")
    m = _STATUS.match(lines[0])
    content_type = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and content_type is None and name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")  # the first one counts (as fastwarc and warcio read it)
    mime, charset = None, None
    if content_type is not None:
        candidate = content_type.split(";", 1)[0].strip().lower()
        mime = candidate if _MIME.fullmatch(candidate) else None
        c = _CHARSET.search(content_type)
        charset = c.group(1).lower() if c else None
    return HttpHead(int(m.group(1)) if m else None, mime, charset, body_start)


def looks_like_html(body: bytes) -> bool:
    """Whether a payload without a usable Content-Type starts like an HTML document."""
    start = body[:_SNIFF_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    while start.startswith(b"<!--"):  # leading comments
        end = start.find(b"-->")
        if end < 0:
            return False
        start = start[end + 3:].lstrip()
    if start.startswith(b"<?xml"):
        start = start[start.find(b"?>") + 2:].lstrip() if b"?>" in start else b""
    return bool(_HTML_START.match(start))
