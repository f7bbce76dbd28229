"""Parquet shard I/O (zstd), atomic and deterministic."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.faults import fault_point
from pipelines.core.hashing import sha256_file
from pipelines.core.schema import conform
from pipelines.core.storage import is_s3, open_seekable
from pipelines.core.store import fetch_uri

SHARD_GLOB = "part-*.parquet"
ROW_GROUP_SIZE = 2048


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardRef:
    """One shard of a stage's output: its name, where it is (a path or an s3:// URI) and its identity."""

    name: str
    uri: str
    fingerprint: str  # "sha256:<hex>": from the manifest, or hashed here for a directory without one
    rows: int | None = None


def stage_shards(directory: str | Path, previous_stage: str) -> list[ShardRef]:
    """The shards a finished stage published (its ``_manifest.json``: the files may live in a shared store),
    or, for a directory a user prepared by hand, its ``part-*.parquet`` files. Missing or empty: a clear error."""
    directory = Path(directory)
    manifest_path = directory / "_manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        refs = []
        for shard in sorted(manifest.get("shards") or {}):
            entry = (manifest["shards"][shard].get("files") or {}).get(shard)
            if entry is None:  # an accounting shard without records of its own (mix's input accounting)
                continue
            refs.append(ShardRef(shard, entry.get("uri") or str(directory / shard), "sha256:" + entry["sha256"],
                                 entry.get("rows")))
        if refs:
            return refs
    paths = require_shards(directory, previous_stage)
    return [ShardRef(p.name, str(p), "sha256:" + sha256_file(p)) for p in paths]


def list_shards(directory: str | Path) -> list[Path]:
    """Shards of a stage output, in a stable order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"stage input directory {directory} does not exist (run the previous stage first)")
    return sorted(directory.glob(SHARD_GLOB))


def require_shards(directory: str | Path, previous_stage: str) -> list[Path]:
    """The input shards of a stage; a missing or empty input is a clear error naming it."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"stage input directory {directory} does not exist (run the {previous_stage} stage first)")
    shards = list_shards(directory)
    if not shards:
        raise FileNotFoundError(f"{directory} holds no part-*.parquet shards (run the {previous_stage} stage first)")
    return shards


def write_shard(path: str | Path, table: pa.Table, *, conform_schema: bool = True) -> None:
    """Write one shard atomically. Same table -> same bytes (no timestamps, fixed row groups)."""
    with atomic_path(path) as tmp:
        write_parquet(tmp, table, conform_schema=conform_schema)


def write_parquet(path: str | Path, table: pa.Table, *, conform_schema: bool = True) -> None:
    """The shard format (zstd, fixed row groups, the schema stored) to ``path`` as it is: the caller makes
    it atomic (a temp name it renames, or a store that publishes it whole)."""
    if conform_schema:
        table = conform(table)
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_SIZE, write_statistics=True,
                   store_schema=True)
    fault_point("shard_write")


def _local(path: str | Path) -> str | Path:
    """A shard in a shared S3 store is read from a local copy (parquet wants to seek)."""
    return fetch_uri(str(path)) if is_s3(str(path)) else path


def read_shard(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(_local(path), columns=columns)


def read_schema(path: str | Path) -> pa.Schema:
    return pq.read_schema(_local(path))


def iter_batches(path: str | Path, columns: list[str] | None = None, batch_size: int = ROW_GROUP_SIZE) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(_local(path)) as f:
        yield from f.iter_batches(batch_size=batch_size, columns=columns)


def read_row_groups(uri: str, groups: list[int]) -> pa.Table:
    """Some row groups of a parquet file, reading only their bytes (a ranged read on S3)."""
    with open_seekable(str(uri)) as f, pq.ParquetFile(f) as pf:
        return pf.read_row_groups(groups)


def count_rows(path: str | Path) -> int:
    return pq.ParquetFile(_local(path)).metadata.num_rows


def read_all(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Concatenate every shard of a stage output, wherever its store keeps them (small data: tests, reports,
    samples)."""
    directory = Path(directory)
    if not (directory / "_manifest.json").exists() and not list_shards(directory):
        return pa.table({})
    shards = [ref.uri for ref in stage_shards(directory, directory.name)]
    return pa.concat_tables([read_shard(p, columns) for p in shards], promote_options="default")
