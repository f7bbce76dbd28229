"""The keep rank of every record, computed by executor tasks (a sample sort): the driver holds no per-record data.

A record's keep rank is its position in keep order (pipelines.dedup.keep): 0 is
kept first. Every global step of dedup names records by rank, so ranks must be
dense and total, and the same however the input is sharded. Four maps:

1. ``sort_shard`` (per shard): each record's **sort key**, one byte string whose
   byte order is the keep order (the policy's numeric columns as order-preserving
   big-endian floats, then the UTF-8 id, which breaks every tie), sorted into a run
   file with the record's row and source; returns a small even sample of its keys.
   It also writes the shard's 128-bit id hashes, sorted, for the uniqueness check.
2. The driver picks range splitters from the samples (one range per
   ``merge_chunk`` records); ``cut_shard`` (per shard) finds where each splitter
   falls in its run, and where each id-hash partition starts.
3. ``check_ids`` (per id-hash partition): ids must be unique (the index's too, in
   a refresh).
4. ``rank_range`` (per key range): merges its slice of every run; its records'
   ranks are the range's base (the records of earlier ranges, known from step 2)
   plus their position. It writes the range's **rank table** (shard, row, source,
   id in rank order: what the finalize tasks read) and each shard's (row, rank)
   pairs, which pass 1 reads back.

The key ranges are the node ranges of the global pass (pipelines.dedup.clusters),
so a finalize task finds its records' ids in one table.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pipelines.core.shards import iter_batches, read_schema
from pipelines.dedup import history, keep, spill

SAMPLES = 64  # keys per shard the driver sees (splitters): O(shards), not O(records)
ID_HASH_DTYPE = np.dtype([("k", "<u8"), ("k2", "<u8"), ("row", "<u8")])  # row: an index entry's is its hid
RANK_DTYPE = np.dtype([("shard", "<u4"), ("row", "<u4"), ("rank", "<i8")])  # pass 1's view, by shard


def run_dtype(width: int) -> np.dtype:
    return np.dtype([("key", f"S{width}"), ("row", "<u4"), ("src", "<u2")])


def table_dtype(id_width: int) -> np.dtype:
    """A rank table row: where the record is, its source (index into the run's source list) and id."""
    return np.dtype([("shard", "<u4"), ("row", "<u4"), ("src", "<u2"), ("id", f"S{max(id_width, 1)}")])


def orderable(values: np.ndarray, descending: bool) -> np.ndarray:
    """Big-endian bytes whose unsigned byte order is the values' order (missing ranks last either way)."""
    v = np.asarray(values, np.float64)
    v = -v if descending else v.copy()
    v[np.isnan(v)] = np.inf
    v = v + 0.0  # -0.0 -> 0.0: equal values must give equal bytes (the id then breaks the tie)
    bits = v.view(np.uint64)
    bits = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    return bits.astype(">u8")


def sort_keys(ids: list[str], values: dict[str, np.ndarray], policy: list[tuple[str, bool]]) -> tuple[np.ndarray, int]:
    """(keys, prefix): one ``S`` key per record, ordered as ``keep.global_rank`` orders them; ``prefix``: the bytes
    before the id. A column the shard lacks is missing for all its records (ranks last)."""
    cols = []
    for column, desc in policy:
        if column == "id":
            break  # ids are unique: nothing after the id can matter
        v = values.get(column)
        cols.append(orderable(np.full(len(ids), np.nan) if v is None else v, desc).view(np.uint8).reshape(-1, 8))
    encoded = np.array([i.encode() for i in ids], dtype="S") if ids else np.zeros(0, "S1")
    width = max(encoded.dtype.itemsize, 1)
    id_bytes = encoded.astype(f"S{width}").view(np.uint8).reshape(-1, width)
    raw = np.concatenate([*cols, id_bytes], axis=1) if cols else id_bytes
    return np.ascontiguousarray(raw).view(f"S{raw.shape[1]}").ravel(), 8 * len(cols)


def id_hashes(ids: list[str]) -> np.ndarray:
    """The ids' 128-bit hashes, as (n, 2) uint64."""
    raw = b"".join(hashlib.blake2b(i.encode(), digest_size=16).digest() for i in ids)
    return np.frombuffer(raw, "<u8").reshape(-1, 2) if ids else np.zeros((0, 2), np.uint64)


def write_id_hashes(store, rel: str, ids: list[str]) -> np.ndarray:
    """Write the ids' 128-bit hashes with their rows, sorted by hash (what ``check_ids`` compares)."""
    hashed = id_hashes(ids)
    rec = np.empty(len(ids), ID_HASH_DTYPE)
    rec["k"], rec["k2"], rec["row"] = hashed[:, 0], hashed[:, 1], np.arange(len(ids))
    rec = rec[np.lexsort((rec["k2"], rec["k"]))]
    with spill.writing(store, rel) as out:
        rec.tofile(out)
    return rec


def run_rel(shard: int) -> str:
    return f"rank/runs/s{shard:05d}.bin"


def id_rel(shard: int) -> str:
    return f"rank/ids/s{shard:05d}.bin"


# ---------------------------------------------------------------- executor tasks

def sort_shard(job: dict) -> dict:
    """Step 1 for one shard: its sorted run, its sorted id hashes and a sample of its keys."""
    path, store, policy = job["path"], job["store"], keep.parse_keep(job["policy"])
    present = set(read_schema(path).names)
    value_cols = [c for c in keep.value_columns(policy) if c in present]
    ids, sources, values = [], [], {c: [] for c in value_cols}
    for batch in iter_batches(path, columns=["id", "source", *value_cols]):
        ids.extend(batch.column("id").to_pylist())
        sources.extend(batch.column("source").to_pylist())
        for c in value_cols:
            try:
                values[c].append(batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64))
            except (TypeError, ValueError) as e:
                raise ValueError(f"dedup.keep: column {c!r} of {path} is not numeric ({e})") from None
    keys, prefix = sort_keys(ids, {c: np.concatenate(v) for c, v in values.items() if v}, policy)
    names = sorted(set(sources), key=str)
    code = {s: k for k, s in enumerate(names)}
    run = np.empty(len(ids), run_dtype(keys.dtype.itemsize))
    run["key"], run["row"] = keys, np.arange(len(ids))
    run["src"] = np.array([code[s] for s in sources], np.uint16) if ids else 0
    run = run[np.argsort(keys, kind="stable")]
    with spill.writing(store, run_rel(job["shard"])) as out:
        run.tofile(out)
    write_id_hashes(store, id_rel(job["shard"]), ids)
    picks = np.unique(np.linspace(0, len(run) - 1, min(SAMPLES, len(run))).astype(np.int64))
    return {"n": len(ids), "width": keys.dtype.itemsize, "prefix": prefix, "samples": run["key"][picks],
            "sources": names}


def cut_shard(job: dict) -> dict:
    """Step 2 for one shard: the row offsets of the key ranges in its run and of the id-hash partitions."""
    store, splitters = job["store"], job["splitters"]
    run = np.fromfile(store.fetch(run_rel(job["shard"])), run_dtype(job["width"]))
    keys = run["key"].astype(splitters.dtype) if run.dtype["key"].itemsize < splitters.dtype.itemsize else run["key"]
    ranges = np.r_[0, np.searchsorted(keys, splitters.astype(keys.dtype), "left"), len(run)].astype(np.int64)
    hashes = np.fromfile(store.fetch(id_rel(job["shard"])), ID_HASH_DTYPE)
    parts = np.r_[0, np.searchsorted(hashes["k"], job["id_bounds"], "left"), len(hashes)].astype(np.int64)
    return {"ranges": ranges, "id_parts": parts}


def check_ids(job: dict) -> list[tuple[int, int]]:
    """Step 3 for one id-hash partition: (shard, row) of up to 3 records whose id another record has too."""
    store, pieces = job["store"], []
    for shard, rel, a, b in job["parts"]:
        rec = spill.read_rows(store, rel, ID_HASH_DTYPE, a, b)
        pieces.append((rec, np.full(len(rec), shard, np.int64)))
    if not pieces:
        return []
    rec = np.concatenate([p[0] for p in pieces])
    shard = np.concatenate([p[1] for p in pieces])
    order = np.lexsort((rec["k2"], rec["k"]))
    rec, shard = rec[order], shard[order]
    same = np.flatnonzero((rec["k"][1:] == rec["k"][:-1]) & (rec["k2"][1:] == rec["k2"][:-1]))
    return [(int(shard[i]), int(rec["row"][i])) for i in same[:3]]


INDEX_IDS = "rank/ids/index.bin"


def stage_index_ids(job: dict) -> np.ndarray:
    """The dedup index's id hashes that a new record's id hash may equal, as one more sorted id-hash file (a
    probe of each segment's sorted ``ids.bin``); returns its partition offsets."""
    def as_id_hashes(src: np.ndarray) -> np.ndarray:
        rec = np.empty(len(src), ID_HASH_DTYPE)
        rec["k"], rec["k2"], rec["row"] = src["k"], src["k2"], src["r"]
        return rec[np.lexsort((rec["k2"], rec["k"]))]

    return history.stage_matches(job["scratch"], INDEX_IDS, job["probe"], len(job["id_bounds"]) + 1, ID_HASH_DTYPE,
                                 [history.local_file(job["store"], e) for e in job["ids"]], history.ID_INDEX_DTYPE,
                                 as_id_hashes)


def rank_range(job: dict) -> dict:
    """Step 4 for one key range: its rank table, and per shard its records' (row, rank), partitioned by shard."""
    store, width, prefix = job["store"], job["width"], job["prefix"]
    keys, shard, row, src = [], [], [], []
    for s, run_width, a, b in job["parts"]:
        rows = spill.read_rows(store, run_rel(s), run_dtype(run_width), a, b)
        keys.append(rows["key"].astype(f"S{width}"))
        shard.append(np.full(len(rows), s, np.uint32))
        row.append(rows["row"])
        src.append(np.asarray(job["source_codes"][s], np.uint16)[rows["src"]] if len(rows) else rows["src"])
    cat = (lambda xs, d: np.concatenate(xs) if xs else np.zeros(0, d))  # noqa: E731
    keys, shard, row, src = cat(keys, f"S{width}"), cat(shard, "<u4"), cat(row, "<u4"), cat(src, "<u2")
    order = np.argsort(keys, kind="stable")
    id_width = width - prefix
    table = np.empty(len(keys), table_dtype(id_width))
    table["shard"], table["row"], table["src"] = shard[order], row[order], src[order]
    if len(keys):
        table["id"] = np.ascontiguousarray(keys[order].view(np.uint8).reshape(-1, width)[:, prefix:]).view(
            f"S{id_width}").ravel()
    spill.save_array(store, job["table"], table)
    ranks = np.empty(len(keys), RANK_DTYPE)
    ranks["shard"], ranks["row"], ranks["rank"] = table["shard"], table["row"], job["base"] + np.arange(len(keys))
    ranks = ranks[np.lexsort((ranks["row"], ranks["shard"]))]
    offsets = spill.write_partitioned(store, job["ranks"], ranks, ranks["shard"], np.arange(1, job["shards"]))
    return {"offsets": offsets}


# ---------------------------------------------------------------- driver

@dataclass
class Ranking:
    """Where the ranks are: per key range its rank table and first rank; per shard its (row, rank) files."""

    n: int  # records ranked
    rows: list[int]  # per shard
    bases: np.ndarray  # (ranges + 1) first rank of each range, then the end (index entries rank before all)
    tables: list[str]
    rank_files: list[tuple[str, np.ndarray]]  # (rel, per-shard offsets), one per range
    id_width: int
    sources: list[str]  # the source names (rank tables hold their index)

    def shard_ranks(self, shard: int) -> list[tuple[str, int, int]]:
        return spill.slices(self.rank_files, shard)


def rank_records(run_map, store, inputs: list[str], policy, *, first: int, chunk: int,
                 index_ids: dict | None = None) -> Ranking:
    """The ranks of the records of ``inputs``, starting at ``first`` (the dedup index's entries rank before them).
    ``index_ids``: in a refresh, the index's id-hash files and records tables ({"n", "store", "ids", "records"}):
    their ids must not recur."""
    sorted_out = run_map(sort_shard, [{"path": p, "shard": s, "store": store, "policy": policy}
                                      for s, p in enumerate(inputs)])
    n = sum(o["n"] for o in sorted_out)
    width = max([o["width"] for o in sorted_out] + [1])
    prefix = max([o["prefix"] for o in sorted_out] + [0])
    names = sorted({s for o in sorted_out for s in o["sources"]}, key=str)
    codes = [[names.index(s) for s in o["sources"]] for o in sorted_out]
    samples = np.unique(np.concatenate([o["samples"].astype(f"S{width}") for o in sorted_out if len(o["samples"])]
                                       or [np.zeros(0, f"S{width}")]))
    ranges = max(1, -(-n // max(chunk, 1)))
    picks = np.unique(np.linspace(0, len(samples), ranges + 1)[1:-1].astype(np.int64))
    splitters = samples[picks[(picks > 0) & (picks < len(samples))]] if len(samples) else samples
    id_parts = max(1, -(-(n + (index_ids["n"] if index_ids else 0)) // max(chunk, 1)))
    id_bounds = spill.hash_bounds(id_parts)
    cuts = run_map(cut_shard, [{"store": store, "shard": s, "width": o["width"], "splitters": splitters,
                                "id_bounds": id_bounds} for s, o in enumerate(sorted_out)])
    id_files = [(s, id_rel(s), c["id_parts"]) for s, c in enumerate(cuts)]
    if index_ids is not None:
        staged = run_map(stage_index_ids, [{**index_ids, "scratch": store, "id_bounds": id_bounds,
                                            "probe": [(rel, off) for _, rel, off in id_files]}])[0]
        id_files.append((len(inputs), INDEX_IDS, staged))
    clashes = [c for found in run_map(check_ids, [
        {"store": store, "parts": [(s, rel, int(off[p]), int(off[p + 1])) for s, rel, off in id_files
                                   if off[p + 1] > off[p]]} for p in range(id_parts)]) for c in found]
    if clashes:
        raise ValueError(f"dedup: record id {id_at(clashes[0], inputs, index_ids)!r} occurs more than "
                         f"once in the input ({len(clashes)}+ repeated ids); ids must be unique")
    counts = np.array([[c["ranges"][p + 1] - c["ranges"][p] for p in range(len(splitters) + 1)] for c in cuts]
                      ).reshape(len(inputs), len(splitters) + 1).sum(axis=0)
    bases = first + np.r_[0, np.cumsum(counts)].astype(np.int64)
    tables = [f"rank/tables/r{p:05d}.npy" for p in range(len(counts))]
    jobs = [{"store": store, "width": width, "prefix": prefix, "base": int(bases[p]), "table": tables[p],
             "ranks": f"rank/ranks/r{p:05d}.bin", "shards": len(inputs), "source_codes": codes,
             "parts": [(s, sorted_out[s]["width"], int(c["ranges"][p]), int(c["ranges"][p + 1]))
                       for s, c in enumerate(cuts) if c["ranges"][p + 1] > c["ranges"][p]]} for p in range(len(counts))]
    results = run_map(rank_range, jobs)
    store.remove("rank/runs")
    store.remove("rank/ids")
    return Ranking(n=n, rows=[o["n"] for o in sorted_out], bases=bases, tables=tables, rank_files=[(j["ranks"], r["offsets"]) for j, r in zip(jobs, results)],
                   id_width=width - prefix, sources=names)


def id_at(clash: tuple[int, int], inputs: list[str], index_ids) -> str:
    """The id of a clashing (shard, row), read back (the driver keeps no ids); shard ``len(inputs)``: the index."""
    shard, row = clash
    if shard >= len(inputs):
        return history.take_records(index_ids["store"], index_ids["records"], np.array([row]), ["id"])["id"][0]
    for batch_start, batch in _batches_with_start(inputs[shard]):
        if batch_start <= row < batch_start + batch.num_rows:
            return batch.column("id")[row - batch_start].as_py()
    return f"<{inputs[shard]} row {row}>"


def _batches_with_start(path: str):
    start = 0
    for batch in iter_batches(path, columns=["id"]):
        yield start, batch
        start += batch.num_rows
