"""The record schema every data stage reads and writes.

Core columns come first and survive every stage (provenance never disappears);
stages append their own columns (``quality_score``, ``dup_of``, ...).
"""
from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import pyarrow as pa

CORE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),  # stable across data versions
    pa.field("url", pa.string()),
    pa.field("domain", pa.string()),
    pa.field("source", pa.string(), nullable=False),  # crawl snapshot or curated source name
    pa.field("crawl_date", pa.string()),  # ISO-8601 date, null for curated sources
    pa.field("lang", pa.string()),
    pa.field("lang_score", pa.float32()),
    pa.field("text", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),  # input file (local path or s3:// URI)
    pa.field("source_offset", pa.int64()),  # byte offset of the record in source_file
]
CORE_SCHEMA = pa.schema(CORE_FIELDS)
CORE_COLUMNS = [f.name for f in CORE_FIELDS]
PROVENANCE_COLUMNS = ["id", "url", "source"]

# Columns of the audit tables under removed/: the full record plus why it went.
DROP_FIELDS = [pa.field("drop_reason", pa.string(), nullable=False), pa.field("drop_detail", pa.string())]


def make_record_id(source: str, key: str) -> str:
    """A stable id: the same source + key (WARC-Record-ID, url, file#index) gives the same id."""
    return hashlib.sha1(f"{source}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()[:24]


def domain_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def empty_table(schema: pa.Schema = CORE_SCHEMA) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table) -> pa.Table:
    """Put core columns first with their canonical types; keep stage columns after them, in order."""
    missing = [n for n in ("id", "source", "text") if n not in table.column_names]
    if missing:
        raise ValueError(f"record table lacks required column(s) {missing}")
    columns, fields = [], []
    for field in CORE_FIELDS:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(table.num_rows, field.type)
        columns.append(col)
        fields.append(field)
    for name in table.column_names:
        if name not in CORE_COLUMNS:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def records_to_table(records: list[dict], extra_schema: list[pa.Field] | None = None) -> pa.Table:
    schema = pa.schema(CORE_FIELDS + list(extra_schema or []))
    if not records:
        return schema.empty_table()
    return pa.Table.from_pylist(records, schema=schema)
