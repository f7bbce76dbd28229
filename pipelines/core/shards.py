"""Parquet shard I/O (zstd), atomic and deterministic."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_path
from pipelines.core.faults import fault_point
from pipelines.core.schema import conform

SHARD_GLOB = "part-*.parquet"
ROW_GROUP_SIZE = 2048


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_shards(directory: str | Path) -> list[Path]:
    """Shards of a stage output, in a stable order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"stage input directory {directory} does not exist (run the previous stage first)")
    return sorted(directory.glob(SHARD_GLOB))


def require_shards(directory: str | Path, previous_stage: str) -> list[Path]:
    """The input shards of a stage; a missing or empty input is a clear error naming it."""
    shards = list_shards(directory)
    if not shards:
        raise FileNotFoundError(f"{directory} holds no part-*.parquet shards (run the {previous_stage} stage first)")
    return shards


def write_shard(path: str | Path, table: pa.Table, *, conform_schema: bool = True) -> None:
    """Write one shard atomically. Same table -> same bytes (no timestamps, fixed row groups)."""
    if conform_schema:
        table = conform(table)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=ROW_GROUP_SIZE,
            write_statistics=True,
            store_schema=True,
        )
        fault_point("shard_write")


def read_shard(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def iter_batches(path: str | Path, columns: list[str] | None = None, batch_size: int = ROW_GROUP_SIZE) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path) as f:
        yield from f.iter_batches(batch_size=batch_size, columns=columns)


def count_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def read_all(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Concatenate every shard of a stage output (small data: tests, reports, samples)."""
    shards = list_shards(directory)
    if not shards:
        return pa.table({})
    return pa.concat_tables([read_shard(p, columns) for p in shards], promote_options="default")
