"""WARC / WET reading with fastwarc, with truncation and corruption detected.

fastwarc stops silently at the end of a truncated gzip stream (it even hands
out the half-read last record), so the raw bytes go through ``IntegrityTap``
on their way in: it checks the gzip framing (every member must end) without
buffering anything. When the input turns out to be cut or corrupt, the last
record is kept only if it lies inside gzip members that ended properly;
everything read before stays, and ``CorruptInput`` tells the stage to count a
read error.

Record handling:
- ``response`` with an HTTP 2xx and an HTML content type -> a candidate
  document (decoded, main text extracted);
- ``conversion`` (WET) -> a candidate document, the UTF-8 body is the text;
- any other record type, non-2xx responses, non-HTML responses -> skipped,
  counted per reason.
"""
from __future__ import annotations

import io
import re
import zlib
from typing import BinaryIO, Iterator

from pipelines.ingest.extract import Extractor, UndecodableError, decode_html
from pipelines.ingest.items import Candidate, CorruptInput, Skipped, dropped, with_text

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}", re.IGNORECASE)
_GZIP_MAGIC = b"\x1f\x8b"
_INFLATE_CHUNK = 1 << 20  # bound on bytes inflated at once by the integrity check


def crawl_source(uri: str) -> str:
    """The Common Crawl snapshot named in an input URI (``cc-main-2024-22``), else ``web``."""
    m = _CRAWL_ID.search(uri)
    return m.group(0).lower() if m else "web"


class IntegrityTap:
    """A pass-through reader (read/tell, as fastwarc wants) that verifies gzip framing.

    ``complete_upto`` is the compressed offset where the last fully decoded gzip
    member ended; ``error`` says what was wrong (truncated member, bad data).
    Plain (uncompressed) inputs pass through unchecked.
    """

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.pos = 0
        self.gzip: bool | None = None
        self.complete_upto = 0
        self.error: str | None = None
        self._inflater = None
        self._member_start = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size) if size is not None and size >= 0 else self.raw.read()
        if data:
            if self.gzip is None:
                self.gzip = data[:2] == _GZIP_MAGIC
            if self.gzip and self.error is None:
                self._verify(data, self.pos)
            self.pos += len(data)
        elif self.gzip and self.error is None and self._inflater is not None:
            self.error = f"truncated gzip member starting at byte {self._member_start} (file ends at byte {self.pos})"
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (whence == io.SEEK_CUR and offset == 0) or (whence == io.SEEK_SET and offset == self.pos):
            return self.pos
        raise io.UnsupportedOperation("input stream is read sequentially")

    def close(self) -> None:
        pass  # the caller owns the underlying stream

    def _verify(self, data: bytes, offset: int) -> None:
        while data:
            if self._inflater is None:
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._member_start = offset
            inflater = self._inflater
            try:
                inflater.decompress(data, _INFLATE_CHUNK)  # output discarded: only the framing matters
                while inflater.unconsumed_tail and not inflater.eof:
                    inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
            except zlib.error as e:
                self.error = f"corrupt gzip data in member starting at byte {self._member_start}: {e}"
                return
            if not inflater.eof:
                return
            rest = inflater.unused_data
            offset += len(data) - len(rest)
            self.complete_upto = offset
            self._inflater = None
            data = rest


def _date(record) -> str | None:
    d = record.record_date
    return d.date().isoformat() if d is not None else None


def _target_uri(headers) -> str | None:
    uri = (headers.get("WARC-Target-URI") or "").strip()
    # Some writers (WARC 1.1 draft style, e.g. dolma's sample) wrap the URI in <...>.
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri or None


def _candidate(record) -> Candidate:
    headers = record.headers
    return Candidate(key=record.record_id or headers.get("WARC-Record-ID") or f"@{record.stream_pos}",
                     url=_target_uri(headers), crawl_date=_date(record), offset=record.stream_pos)


def _read_body(record, cand: Candidate, max_bytes: int) -> tuple[bytes | None, bool]:
    """The payload, or None when too large; False when the stream ended inside it."""
    length = record.content_length
    cand.bytes_in = length
    if length > max_bytes:
        dropped(cand, "too_large", bytes=length)
        return None, True  # fastwarc skips the unread body
    body = record.reader.read()
    return body, len(body) >= length


def convert(record, extractor: Extractor, max_bytes: int, min_chars: int) -> tuple[Candidate | Skipped, bool]:
    """One WARC record -> (what it is, whether it was read whole)."""
    kind = str(record.record_type)
    if kind == "conversion":
        cand = _candidate(record)
        body, whole = _read_body(record, cand, max_bytes)
        if body is None:
            return cand, whole
        try:
            return with_text(cand, body.decode("utf-8"), min_chars), whole
        except UnicodeDecodeError as e:
            return dropped(cand, "undecodable", error=str(e)[:200]), whole
    if kind != "response":
        return Skipped(kind), True
    if not record.is_http:
        return Skipped("non_html"), True
    status = record.http_headers.status_code
    if not 200 <= (status or 0) < 300:
        return Skipped("http_status"), True
    if (record.http_content_type or "").lower() not in HTML_TYPES:
        return Skipped("non_html"), True
    cand = _candidate(record)
    body, whole = _read_body(record, cand, max_bytes)
    if body is None or not whole:
        return cand, whole
    try:
        html = decode_html(body, record.http_charset)
    except UndecodableError as e:
        return dropped(cand, "undecodable", error=str(e)), whole
    try:
        text = extractor.extract(html, cand.url)
    except Exception as e:  # a parser failure on one page must not stop the file
        return dropped(cand, "extract_error", error=f"{type(e).__name__}: {e}"[:200]), whole
    return with_text(cand, text, min_chars), whole


def read_archive(stream: BinaryIO, extractor: Extractor, max_bytes: int, min_chars: int) -> Iterator[Candidate | Skipped]:
    """Yield every record of a WARC/WET stream; raise ``CorruptInput`` after the readable part of a bad one."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    tap = IntegrityTap(stream)
    # One record of look-ahead: the last record is only trusted once the input has ended cleanly,
    # or when it lies inside gzip members that ended properly.
    pending: tuple[Candidate | Skipped, int, bool] | None = None

    def trusted(pos: int, whole: bool) -> bool:
        return whole and (tap.error is None or (bool(tap.gzip) and pos < tap.complete_upto))

    try:
        for record in ArchiveIterator(tap, record_types=WarcRecordType.any_type, parse_http=True):
            if pending is not None:
                yield pending[0]
            item, whole = convert(record, extractor, max_bytes, min_chars)
            pending = (item, record.stream_pos, whole)
            if not whole:
                break
    except OSError as e:
        if isinstance(e, (ConnectionError, TimeoutError)):
            raise  # network trouble is not corrupt content: fail, a re-run resumes
        if pending is not None and trusted(pending[1], pending[2]):
            yield pending[0]  # fastwarc failed on the header after it
        raise CorruptInput(f"malformed WARC after byte {tap.pos}: {tap.error or e}") from e
    if pending is not None and trusted(pending[1], pending[2]):
        yield pending[0]
    if tap.error:
        raise CorruptInput(tap.error)
    if pending is not None and not pending[2]:
        raise CorruptInput(f"record at byte {pending[1]} is cut short")
