"""WARC / WET reading that keeps every record it can parse, and says where it could not.

A crawl file can be cut short, hold a corrupt gzip member, garbage between records, a record with
broken headers, extra blank lines (2014 WET files) or HTTP heads with bare-LF line ends (a 2009
crawl). The reader here is tolerant by construction: gzip damage is stepped over by
``inflate.InflatedStream``; a line that is not where a WARC record should start is skipped up to the
next ``WARC/<version>`` line; a record whose headers cannot be parsed, or whose block is cut short,
is not used. Each such problem is yielded as a :class:`Defect` with the byte offset of the record
(member) where it lies, and reading goes on: records after a defect are still read.

Record handling:
- ``response`` with an HTTP 2xx and an HTML content type (or none usable, and a body that sniffs as
  HTML) -> a candidate document (decoded, main text extracted);
- ``conversion`` (WET) -> a candidate document, the UTF-8 body is the text;
- any other record type, non-2xx responses, non-HTML responses -> skipped, counted per reason.
Every record is also counted by its WARC-Type (``Seen``), so a file's yield can be gated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pipelines.ingest import http_head
from pipelines.ingest.extract import Extractor, UndecodableError, decode_html
from pipelines.ingest.inflate import InflatedStream
from pipelines.ingest.items import Candidate, Defect, Skipped, dropped, with_text

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}", re.IGNORECASE)
_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+\r?\n")
_VERSION_TAIL = re.compile(rb"WARC/\d+\.\d+\r?\n\Z")
_RECORD_START = re.compile(rb"WARC/\d+\.\d+\r?\n[A-Za-z0-9-]+:[^\n]*\n")  # a version line and a header
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_MAX_LINE = 1 << 16  # a WARC header line longer than this is corruption
_MAX_HEADERS = 1024
HEAD_BYTES = 1 << 16  # of a record too large to hold: enough for its HTTP head


def crawl_source(uri: str) -> str:
    """The Common Crawl snapshot named in an input URI (``cc-main-2024-22``), else ``web``."""
    m = _CRAWL_ID.search(uri)
    return m.group(0).lower() if m else "web"


@dataclass
class Seen:
    """A WARC record of this type was read (counted per file for the yield gate)."""
    record_type: str


@dataclass
class WarcRecord:
    offset: int
    headers: dict[str, str]  # names lower-cased (WARC header names are case-insensitive)
    length: int  # the declared block length
    block: bytes  # the block; only its first HEAD_BYTES when ``too_large`` (the rest was skipped unread)
    too_large: bool = False

    @property
    def record_type(self) -> str:
        return self.headers.get("warc-type", "unknown").strip().lower() or "unknown"


def _terminated(after: bytes) -> bool:
    """A record block is followed by CRLF CRLF (or LF LF), or ends the input (or a segment)."""
    return after == b"" or after.startswith((b"\r\n", b"\n"))


def _headers(stream: InflatedStream) -> tuple[dict[str, str] | None, bytes, int]:
    """Header lines up to the blank line; (None, the line that broke them, its offset) when they do not parse."""
    headers: dict[str, str] = {}
    last = None
    for _ in range(_MAX_HEADERS):
        offset = stream.offset()
        line = stream.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            return None, line, offset  # cut short, a gap, or an absurd line
        if line in (b"\r\n", b"\n"):
            return headers, b"", offset
        if line[:1] in (b" ", b"\t") and last is not None:  # a folded continuation line
            headers[last] += " " + line.strip().decode("utf-8", "replace")
            continue
        name, sep, value = line.partition(b":")
        if not sep or _VERSION_LINE.fullmatch(line):
            return None, line, offset
        last = name.strip().decode("utf-8", "replace").lower()
        headers.setdefault(last, value.strip().decode("utf-8", "replace"))
    return None, b"", stream.offset()


def _resync(stream: InflatedStream, line: bytes, offset: int) -> tuple[bytes, int, int]:
    """Skip lines from ``line`` (at ``offset``) up to the next WARC version line:
    (that line, or b"" at the end; its offset; bytes skipped)."""
    skipped = 0
    while True:
        if _VERSION_LINE.fullmatch(line):
            return line, offset, skipped
        tail = _VERSION_TAIL.search(line)  # a record right after bytes with no line end (the last of a bad member)
        if tail:
            return line[tail.start():], stream.offset(back=len(line) - tail.start()), skipped + tail.start()
        skipped += len(line)
        offset = stream.offset()
        line = stream.readline(_MAX_LINE)
        if not line and not stream.next_segment():
            return b"", offset, skipped


def warc_records(raw: BinaryIO, max_bytes: int) -> Iterator[WarcRecord | Defect]:
    """Every parseable record of a WARC/WET stream, and a :class:`Defect` where one could not be read."""
    stream = InflatedStream(raw)
    reported = -1  # offset of the last defect yielded: one problem is reported once

    def defect(offset: int, error: str) -> Defect:
        nonlocal reported
        reported = max(reported, offset)
        return Defect(offset, error)

    def drained() -> Iterator[Defect]:
        for d in stream.damage:
            yield defect(d.offset, d.error)
        stream.damage.clear()

    line, offset = b"", 0
    while True:
        yield from drained()
        if not line:
            offset = stream.offset()
            line = stream.readline(_MAX_LINE)
            if not line:
                if stream.next_segment():
                    continue
                yield from drained()
                return
        if line.strip() == b"":  # blank lines between records (2014 WET files have an extra CRLF)
            line = b""
            continue
        if not _VERSION_LINE.fullmatch(line):
            start = offset
            line, offset, skipped = _resync(stream, line, offset)
            yield from drained()
            if reported < start:
                yield defect(start, f"{skipped} bytes that are not a WARC record at byte {start}")
            continue
        headers, broke, broke_at = _headers(stream)
        if headers is None:
            yield from drained()
            if reported < offset:
                cut = not broke.endswith(b"\n")  # the input (or a segment) ended inside the headers
                yield defect(offset, f"the record at byte {offset} is cut short inside its headers" if cut
                             else f"malformed WARC headers in the record at byte {offset}: {broke[:80]!r}")
            line, offset, _ = _resync(stream, broke, broke_at)
            continue
        record_offset, line = offset, b""
        try:
            length = int(headers.get("content-length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            yield defect(record_offset, f"the record at byte {record_offset} has no valid Content-Length "
                                        f"({headers.get('content-length')!r})")
            line, offset, _ = _resync(stream, b"", stream.offset())
            continue
        too_large = length > max_bytes
        if too_large:  # keep only the head (an HTTP head says what the payload was); skip the rest unheld
            block, got = stream.read(min(length, HEAD_BYTES))
            got += stream.read(length - got, keep=False)[1]
        else:
            block, got = stream.read(length)
        if got < length:
            yield from drained()
            if reported < record_offset:
                yield defect(record_offset, f"the record at byte {record_offset} is cut short "
                                            f"({got} of {length} bytes)")
            continue
        if not too_large and not _terminated(stream.peek(2)):
            # No record terminator where the declared length ends: if the next record starts inside
            # the block, this one was cut short; read on from there.
            nxt = _RECORD_START.search(block, 1)
            if nxt:
                stream.unread(block[nxt.start():])
                yield defect(record_offset, f"the record at byte {record_offset} is cut short: the next record "
                                            f"starts {nxt.start()} bytes into its declared {length}")
                continue
        yield WarcRecord(record_offset, headers, length, block, too_large)


def _date(headers: dict[str, str]) -> str | None:
    m = _DATE.match(headers.get("warc-date", "").strip())
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


def _target_uri(headers: dict[str, str]) -> str | None:
    uri = (headers.get("warc-target-uri") or "").strip()
    # Some writers (WARC 1.1 draft style, e.g. dolma's sample) wrap the URI in <...>.
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri or None


def _candidate(record: WarcRecord, payload_bytes: int) -> Candidate:
    h = record.headers
    return Candidate(key=h.get("warc-record-id") or f"@{record.offset}", url=_target_uri(h), crawl_date=_date(h),
                     offset=record.offset, bytes_in=payload_bytes)


def convert(record: WarcRecord, extractor: Extractor, min_chars: int) -> Candidate | Skipped:
    """One WARC record -> a candidate document (with text or a drop reason), or a skip with its reason."""
    kind = record.record_type
    if kind == "conversion":
        cand = _candidate(record, record.length)
        if record.too_large:
            return dropped(cand, "too_large", bytes=record.length)
        try:
            return with_text(cand, record.block.decode("utf-8"), min_chars)
        except UnicodeDecodeError as e:
            return dropped(cand, "undecodable", error=str(e)[:200])
    if kind != "response":
        return Skipped(kind)
    head = http_head.parse(record.block)
    if head is None:
        return Skipped("non_html")
    if not 200 <= (head.status or 0) < 300:
        return Skipped("http_status")
    body = record.block[head.body_start:]
    if head.content_type not in HTML_TYPES and not (head.content_type is None and http_head.looks_like_html(body)):
        return Skipped("non_html")
    if record.too_large:
        payload = record.length - head.body_start
        return dropped(_candidate(record, payload), "too_large", bytes=payload)
    cand = _candidate(record, len(body))
    try:
        html = decode_html(body, head.charset)
    except UndecodableError as e:
        return dropped(cand, "undecodable", error=str(e))
    try:
        text = extractor.extract(html, cand.url)
    except Exception as e:  # a parser failure on one page must not stop the file
        return dropped(cand, "extract_error", error=f"{type(e).__name__}: {e}"[:200])
    return with_text(cand, text, min_chars)


def read_archive(stream: BinaryIO, extractor: Extractor, max_bytes: int,
                 min_chars: int) -> Iterator[Candidate | Skipped | Seen | Defect]:
    """What every record of a WARC/WET stream is, in order, with a :class:`Defect` wherever reading failed.

    Network errors from the stream propagate (a re-run resumes); damaged content never raises."""
    for record in warc_records(stream, max_bytes):
        if isinstance(record, Defect):
            yield record
            continue
        yield Seen(record.record_type)
        yield convert(record, extractor, min_chars)
