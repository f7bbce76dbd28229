"""The blends' global shuffle as a distributed exchange: no process ever holds the corpus.

A blend's order is a sort by a seeded hash of (id, copy) (``plan.shuffle_order``), cut into
output shards of ``max_rows`` rows. The driver knows, for every output position, which input
shard the row comes from (a few integers per row, never texts). Then:

- **scatter** (one task per input shard): the shard's rows of each blend, in output order,
  written to scratch as one parquet file per (input shard, blend) with one row group per
  output shard that draws from it;
- **gather** (one task per output shard, the stage's shards): read that row group of every
  input shard that contributes, interleave them by output position, add the blend columns.

Reading a row group fetches just its bytes (a ranged GET on S3), so every row is read twice
in all, whatever the number of shards.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.shards import read_row_groups, read_shard


def piece_rel(dataset: str, shard_index: int) -> str:
    return f"{dataset}/s{shard_index:05d}.parquet"


def scatter(job: tuple) -> dict[str, dict[int, int]]:
    """Map side for one input shard; returns {blend: {output shard: row group}} of what it wrote."""
    uri, shard_index, pieces, schema, scratch = job
    table = conform_to(read_shard(uri), schema) if pieces else None
    index: dict[str, dict[int, int]] = {}
    for dataset, (rows, out_shard) in sorted(pieces.items()):
        if not len(rows):
            continue
        starts = np.flatnonzero(np.r_[True, out_shard[1:] != out_shard[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        index[dataset] = {}
        with scratch.writer(piece_rel(dataset, shard_index)) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for group, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
                writer.write_table(table.take(pa.array(rows[a:b], pa.int64())), row_group_size=b - a)
                index[dataset][int(out_shard[a])] = group
    return index


def conform_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with the columns of the blend's unified schema (a shard without a column gets nulls)."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def gather(src: np.ndarray, reads: list[tuple[int, str, int]], schema: pa.Schema) -> pa.Table:
    """Reduce side for one output shard. ``src[p]``: the input shard of output position ``p``; ``reads``:
    (input shard, scratch uri, row group), by input shard. Each piece holds its rows in output order."""
    pieces = [read_row_groups(uri, [group]) for _, uri, group in sorted(reads)]
    if not pieces:
        return schema.empty_table()
    table = pa.concat_tables(pieces)
    # Concatenated rows are grouped by input shard, each group in output order: a stable sort of src
    # lists the output positions in that same sequence.
    order = np.argsort(src, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return table.take(pa.array(inverse, pa.int64())).combine_chunks()
