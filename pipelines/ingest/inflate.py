"""The uncompressed bytes of a crawl file (plain, or gzip with one or many members), read in order,
surviving corruption.

A crawl file that is corrupt in one place must not lose the records after it. When a gzip member
cannot be decoded (bad data, garbage between members), the damage is recorded as a :class:`Damage`
with its byte offset, and reading resumes at the next gzip member header found after the member that
failed. The uncompressed bytes before and after such a gap are not contiguous: ``read``/``readline``/``peek``
stop at the gap (they return short) and ``next_segment()`` steps over it, so the WARC parser never
glues half a record to the next one.

Offsets follow the Common Crawl index convention (and fastwarc's): for gzip input, the compressed
offset of the member a position lies in; for plain input, the byte offset itself.
"""
from __future__ import annotations

import zlib
from bisect import bisect_right
from dataclasses import dataclass
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
_MEMBER_HEADER = b"\x1f\x8b\x08"  # magic + deflate: where a resync may start
_CHUNK = 1 << 20  # compressed bytes read at once
_MAX_OUT = 1 << 22  # uncompressed bytes inflated at once: a zip bomb never sits in memory whole
_UNREAD_WINDOW = 256 << 20  # offsets stay known this far back (unread puts back at most one record block)
_RESCAN_CAP = 64 << 20  # raw bytes of one member kept for a rescan after corruption (CC members are ~kB)


@dataclass(frozen=True)
class Damage:
    offset: int
    error: str


class InflatedStream:
    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.gzip: bool | None = None
        self.damage: list[Damage] = []  # appended as found; the reader drains it
        self._buf = b""  # decoded bytes not yet consumed, all from the current segment
        self._pos = 0  # consumed prefix of _buf
        self._abs = 0  # uncompressed offset of _buf[_pos] (within all decoded bytes)
        # Where each member's output starts (uncompressed offset) and the member's compressed offset.
        self._mark_at: list[int] = []
        self._mark_member: list[int] = []
        self._decoded = 0  # uncompressed bytes decoded so far
        self._data = b""  # raw bytes read but not yet inflated
        self._data_offset = 0  # compressed offset of _data[0]
        self._raw_end = 0  # compressed bytes read from raw so far
        self._inflater = None
        self._member_start = 0
        self._member_raw = bytearray()  # raw bytes of the current member, for a rescan after corruption
        self._member_raw_whole = True  # _member_raw holds every byte since the member's start
        self._member_out = 0  # bytes the current member decoded so far
        self._gap = False  # the current segment ended at a gap (corruption), more may follow
        self._eof = False
        self._resyncing = False  # inside a corrupt region: further failures are the same damage

    # ---------------------------------------------------------------- what the parser uses

    def offset(self, back: int = 0) -> int:
        """The offset (member start for gzip, byte offset for plain) of the next unread byte, or of the
        byte ``back`` bytes before it."""
        if not back and self._pos >= len(self._buf):
            self._fill()  # the next byte may be in a member not decoded yet
        if not self.gzip:
            return self._abs - back
        if not back and self._pos >= len(self._buf):
            return self._data_offset  # at a gap or the end: where reading would resume
        return self._mark_member[max(0, bisect_right(self._mark_at, self._abs - back) - 1)]

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes of the current segment (fewer at a gap or the end), not consumed."""
        while len(self._buf) - self._pos < n and self._fill():
            pass
        return self._buf[self._pos:self._pos + n]

    def unread(self, data: bytes) -> None:
        """Put back bytes just read (a record that turned out to be cut short holds the next one)."""
        self._buf = data + self._buf[self._pos:]
        self._pos = 0
        self._abs -= len(data)

    def readline(self, limit: int) -> bytes:
        """Up to and including the next LF, at most ``limit`` bytes; short at a gap or the end."""
        parts, got = [], 0
        while got < limit:
            if self._pos >= len(self._buf) and not self._fill():
                break
            end = self._buf.find(b"\n", self._pos, self._pos + limit - got)
            stop = end + 1 if end >= 0 else min(len(self._buf), self._pos + limit - got)
            parts.append(self._buf[self._pos:stop])
            got += stop - self._pos
            self._take(stop - self._pos)
            if end >= 0:
                break
        return b"".join(parts)

    def read(self, n: int, keep: bool = True) -> tuple[bytes, int]:
        """Up to ``n`` bytes (short at a gap or the end) and how many were consumed; ``keep=False``
        skips them without holding them (an oversized record body)."""
        parts, got = [], 0
        while got < n:
            if self._pos >= len(self._buf) and not self._fill():
                break
            stop = min(len(self._buf), self._pos + n - got)
            if keep:
                parts.append(self._buf[self._pos:stop])
            got += stop - self._pos
            self._take(stop - self._pos)
        return b"".join(parts), got

    def next_segment(self) -> bool:
        """After a short read: step over a gap and return True, or False at the end of the input."""
        if self._pos < len(self._buf) or self._fill():
            return True
        if self._gap and not self._eof:
            self._gap = False
            return self._fill() or self.next_segment()
        return False

    # ---------------------------------------------------------------- decoding

    def _take(self, n: int) -> None:
        self._pos += n
        self._abs += n

    def _emit(self, out: bytes) -> None:
        if self.gzip and self._member_out == 0:
            self._mark_at.append(self._decoded)
            self._mark_member.append(self._member_start)
            if len(self._mark_at) > 8192 and self._mark_at[4096] < self._abs - _UNREAD_WINDOW:
                del self._mark_at[:4096], self._mark_member[:4096]  # bounded memory on huge files
        self._member_out += len(out)
        self._decoded += len(out)
        self._buf = self._buf[self._pos:] + out if self._pos < len(self._buf) else out
        self._pos = 0

    def _read_raw(self) -> bool:
        chunk = self.raw.read(_CHUNK)
        if not chunk:
            return False
        self._data += chunk  # invariant: _data_offset + len(_data) == _raw_end
        self._raw_end += len(chunk)
        return True

    def _fill(self) -> bool:
        """Decode more bytes of the current segment into the buffer; False at a gap or the end."""
        if self._gap or self._eof:
            return False
        while True:
            if not self._data and not self._read_raw():
                self._end_of_input()
                return False
            if self.gzip is None:
                self.gzip = self._data[:2] == GZIP_MAGIC
            if not self.gzip:
                out, self._data = self._data, b""
                self._emit(out)
                return True
            out = self._inflate()
            if out is None:  # corruption: the segment ends here
                return False
            if out:
                self._emit(out)
                return True

    def _inflate(self) -> bytes | None:
        if self._inflater is None:
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._member_start = self._data_offset
            self._member_raw = bytearray()
            self._member_raw_whole = True
            self._member_out = 0
        data = self._data
        try:
            out = self._inflater.decompress(data, _MAX_OUT)
        except zlib.error as e:
            self._corrupt(f"corrupt gzip data in the member at byte {self._member_start}: {e}")
            return None
        rest = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
        used = len(data) - len(rest)
        if self._member_raw_whole and len(self._member_raw) < _RESCAN_CAP:
            self._member_raw += data[:used]
        else:
            self._member_raw_whole = False
        self._data_offset += used
        self._data = rest
        if self._inflater.eof:
            self._inflater = None
            self._resyncing = False
        return out

    def _corrupt(self, error: str) -> None:
        """Record the damage once per corrupt region; look for the next member header after its start."""
        if not self._resyncing:
            self.damage.append(Damage(self._member_start, error))
            self._resyncing = True
        # Rescan from just after the failed member's start: a member cut short may be followed directly
        # by a good one, whose header the inflater swallowed as data.
        if self._member_raw_whole:
            data, base = bytes(self._member_raw) + self._data, self._member_start
        else:
            data, base = self._data, self._data_offset
        if base == self._member_start:
            data, base = data[1:], base + 1
        self._inflater = None
        self._gap = True
        while True:
            i = data.find(_MEMBER_HEADER)
            if i >= 0:
                self._data, self._data_offset = data[i:], base + i
                return
            tail = data[-2:]  # a header may straddle two reads
            self._data, self._data_offset = tail, base + len(data) - len(tail)
            if not self._read_raw():
                self._data, self._data_offset = b"", self._raw_end
                return
            data, base = self._data, self._data_offset

    def _end_of_input(self) -> None:
        if self._inflater is not None:
            self.damage.append(Damage(self._member_start, f"truncated gzip member starting at byte "
                                                          f"{self._member_start} (the file ends at byte {self._raw_end})"))
        self._inflater = None
        self._eof = True
