"""Ingest: raw web archives (WARC/WET) and curated text sources -> record shards.

Modules: ``items`` (what readers yield), ``warc`` (WARC/WET reading with
truncation detection), ``extract`` (HTML decoding and main-text extraction),
``curated`` (Wikipedia XML, text files, line corpora, JSONL), ``langid``
(language identification), ``stage`` (planning, one shard per input file).
"""
