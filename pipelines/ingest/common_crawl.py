"""Common Crawl on S3: a crawl id -> the object URIs of its WARC or WET files.

``ingest.crawl_id`` (``CC-MAIN-YYYY-WW``) names a crawl; its listing
``s3://<cc_bucket>/crawl-data/<crawl_id>/<cc_files>.paths.gz`` (one key a line,
gzipped) is streamed, the first ``max_files`` keys are taken in listing order
(0 = all), and each becomes one ingest shard. Access, endpoint and retries are
those of ``pipelines.core.storage`` (anonymous with PIPELINES_S3_ANONYMOUS=1,
any S3-compatible store with AWS_ENDPOINT_URL).

``ingest.crawls`` lists the crawls a corpus holds (a refresh appends one); each is read
like ``crawl_id``. ``available_crawls`` lists the crawl ids under the bucket's
``crawl-data/``; ``pick_crawl`` chooses the one a refresh adds: the newest crawl
published by the run's date that the corpus does not hold yet, so a scheduled run takes
the newest and a catch-up over past dates takes them one per run, in order.
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
import re

from pipelines.core.storage import open_input, s3_client

CRAWL_ID = re.compile(r"CC-MAIN-(\d{4})-(\d{2})")
FILE_KINDS = ("warc", "wet")


def validate_crawl_id(crawl_id: str) -> str:
    m = CRAWL_ID.fullmatch(str(crawl_id or ""))
    if not m or not 1 <= int(m.group(2)) <= 53:
        raise ValueError(f"ingest.crawl_id must look like CC-MAIN-YYYY-WW (week 01-53), got {crawl_id!r}")
    return m.group(0)


def listing_uri(bucket: str, crawl_id: str, kind: str) -> str:
    if kind not in FILE_KINDS:
        raise ValueError(f"ingest.cc_files must be one of {FILE_KINDS}, got {kind!r}")
    return f"s3://{bucket}/crawl-data/{validate_crawl_id(crawl_id)}/{kind}.paths.gz"


def crawl_files(crawl_id: str, bucket: str = "commoncrawl", kind: str = "warc", max_files: int = 0) -> list[str]:
    """The s3:// URIs of the crawl's first ``max_files`` files (all when 0), sorted."""
    uri = listing_uri(bucket, crawl_id, kind)
    keys: list[str] = []
    try:
        with open_input(uri) as raw, io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8") as lines:
            for line in lines:
                key = line.strip()
                if not key:
                    continue
                if not key.startswith(f"crawl-data/{crawl_id}/"):
                    raise ValueError(f"{uri}: listed key {key!r} is not under crawl-data/{crawl_id}/")
                keys.append(f"s3://{bucket}/{key}")
                if 0 < max_files <= len(keys):
                    break
    except OSError as e:
        raise FileNotFoundError(f"ingest.crawl_id {crawl_id}: cannot read the listing {uri}: {e}") from e
    if not keys:
        raise ValueError(f"ingest.crawl_id {crawl_id}: the listing {uri} names no files")
    return sorted(keys)


def crawl_week(crawl_id: str) -> tuple[int, int]:
    """(year, ISO week) a crawl id names: the order crawls were published in."""
    m = CRAWL_ID.fullmatch(validate_crawl_id(crawl_id))
    return int(m.group(1)), int(m.group(2))


def held_crawls(cfg: dict) -> list[str]:
    """The crawls an ingest config reads: ``crawls`` then ``crawl_id``, each once, validated."""
    out: list[str] = []
    for c in [*(cfg.get("crawls") or []), *([cfg["crawl_id"]] if cfg.get("crawl_id") else [])]:
        if validate_crawl_id(c) not in out:
            out.append(c)
    return out


def available_crawls(bucket: str = "commoncrawl") -> list[str]:
    """Every crawl id under ``s3://<bucket>/crawl-data/`` (its "folders"), oldest first."""
    found = set()
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="crawl-data/", Delimiter="/")
    for page in pages:
        for prefix in page.get("CommonPrefixes") or []:
            name = prefix["Prefix"][len("crawl-data/"):].rstrip("/")
            if CRAWL_ID.fullmatch(name) and 1 <= int(name[-2:]) <= 53:
                found.add(name)
    return sorted(found, key=crawl_week)


def pick_crawl(available: list[str], held: list[str], as_of: dt.date) -> str | None:
    """The newest crawl of ``available`` published in or before ``as_of``'s ISO week and not in ``held``."""
    year, week, _ = as_of.isocalendar()
    due = [c for c in available if crawl_week(c) <= (year, week) and c not in set(held)]
    return max(due, key=crawl_week) if due else None
