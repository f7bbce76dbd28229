"""What the input readers yield, one per input record.

A ``Candidate`` is a record that entered as a document (an HTML response, a WET
conversion, a curated text). It either carries ``text`` or a ``drop_reason``:
drops are counted and written to ``removed/``. A ``Skipped`` is an input record
that is not a document at all (a WARC request, an image, a wiki redirect): it
is only counted, in the shard's ``extra`` stats as ``skipped_<reason>``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Candidate:
    key: str  # stable per-source key for the record id (WARC-Record-ID, page id, file:line)
    url: str | None = None
    crawl_date: str | None = None
    offset: int | None = None
    text: str | None = None
    bytes_in: int = 0  # size of the raw payload the text came from
    drop_reason: str | None = None
    drop_detail: str | None = None


@dataclass
class Skipped:
    reason: str


@dataclass(frozen=True)
class Defect:
    """A part of an input file that could not be read (corrupt, cut short, malformed); reading went on after it."""
    offset: int  # byte offset of the record (gzip member) where it lies
    error: str


def dropped(candidate: Candidate, reason: str, **detail) -> Candidate:
    candidate.text = None
    candidate.drop_reason = reason
    candidate.drop_detail = json.dumps(detail, sort_keys=True) if detail else None
    return candidate


def with_text(candidate: Candidate, text: str, min_chars: int) -> Candidate:
    """Attach text, or drop the candidate as ``empty_text`` when too little is left."""
    text = text.strip()
    if len(text) < max(1, min_chars):
        return dropped(candidate, "empty_text", chars=len(text))
    candidate.text = text
    return candidate
