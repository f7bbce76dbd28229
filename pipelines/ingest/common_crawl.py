"""Common Crawl on S3: a crawl id -> the object URIs of its WARC or WET files.

``ingest.crawl_id`` (``CC-MAIN-YYYY-WW``) names a crawl; its listing
``s3://<cc_bucket>/crawl-data/<crawl_id>/<cc_files>.paths.gz`` (one key a line,
gzipped) is streamed, the first ``max_files`` keys are taken in listing order
(0 = all), and each becomes one ingest shard. Access, endpoint and retries are
those of ``pipelines.core.storage`` (anonymous with PIPELINES_S3_ANONYMOUS=1,
any S3-compatible store with AWS_ENDPOINT_URL).
"""
from __future__ import annotations

import gzip
import io
import re

from pipelines.core.storage import open_input

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
