"""The dedup index: the keys of every record a dedup run kept, so that a refresh dedups only what is new.

A **refresh** is a dedup run whose input is the previous run's input plus new shards (a new crawl), with
the same dedup settings, code and eval sets (``dedup.history: true``, the default). Then:

- the previous shards keep their decisions: their tasks carry the fingerprints their fragments were
  decided with, so the runner skips them and their bytes stay as they are;
- the new shards are hashed (pass 1) and deduplicated within themselves **and against the index**: the
  index's records enter the global pass as one more set of key files, ranked before every new record,
  so the earlier record always wins (scope ``global``); they are never dropped themselves;
- the index grows by the new records the run kept.

Anything else (a changed or removed old shard, e.g. after a takedown; other settings, code or eval sets;
semantic dedup on; no index) is a full build, which writes a fresh index.

The index is a chain of **segments**, one per run that added records: a full build writes the first, each
refresh appends one holding only the records it kept, and the earlier segments are reused as they are (their
files, hashes and DVC cache entries do not change). So a refresh writes O(new records), not O(index). Entry
numbers (``hid``) run on across segments: segment k holds hids [first_k, first_k + records_k).

Files of a segment (under ``index/<run>/`` of the stage's store, listed with their sha256 in
``_manifest.json`` ``index.segments``, versioned by DVC with the data):

- ``records.parquet``: per entry, in hid order: ``id``, ``source`` and ``added`` (the dedup stage key of the
  run that kept it, so a drop names the run, and so the data version, it lost to), in fixed row groups, so
  that an answer reads only the row groups of the entries it names;
- ``exact.bin`` / ``url.bin``: the 128-bit exact-text / URL keys with their hid, sorted by key (the spill
  format of pipelines.dedup.spill: any hash-range partition is a contiguous slice);
- ``band_<b>.bin``: MinHash band keys with their hid, sorted by key;
- ``ids.bin``: the 128-bit hashes of the entries' ids with their hid, sorted (a refresh checks that no new
  record reuses an indexed id by probing it);
- ``signatures.bin`` (when ``verify_threshold`` is set): each entry's MinHash signature (low 32 bits of
  each of the ``bands * rows`` minima), in hid order. Candidate pairs of a new record with an index entry
  are verified by the signatures' agreement (an unbiased estimate of the Jaccard similarity, standard error
  ~0.04 at 112 permutations), since the index keeps no texts and no shingles: about 0.5 KB per record.

**Lookup is a probe:** a refresh stages only the index entries that share a key (or an id hash) with a new
record (a binary search of each segment's sorted file per distinct new key; the file is memory-mapped, so only
the pages holding matches are read) and reads single signature rows and record row groups by hid. The global
pass then works on the new records and their matches, not on the whole index. (Still O(index) per refresh:
scope ``snapshot``'s cross-source count, which unsalts every indexed exact key. On S3 a segment's file is
downloaded whole before it is probed: ranged reads would make that follow the matches too.)

Keys are stored as the run used them (salted per source with scope ``snapshot``), since an index only
serves runs with the same settings.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.hashing import canonical_json, params_hash, stage_hash
from pipelines.core.manifest import load_manifest_if_any
from pipelines.core.shards import ROW_GROUP_SIZE
from pipelines.core.store import LocalStore, fetch_uri
from pipelines.dedup import spill

INDEX = "index"
INDEX_INPUT = "@dedup-index"  # the pseudo input a refresh's new shards are decided against
HIST_SHARD = np.uint32(0xFFFFFFFF)  # BAND_DTYPE "s" of an index entry: its "o" is then its hid
BAND_INDEX_DTYPE = np.dtype([("k", "<u8"), ("r", "<i8")])
SIG_DTYPE = np.dtype("<u4")
ID_INDEX_DTYPE = spill.EXACT_DTYPE  # an entry's 128-bit id hash (k, k2) and its hid (r)
RECORDS = "records.parquet"
SIGNATURES = "signatures.bin"
IDS = "ids.bin"


@dataclass
class Refresh:
    """A refresh's view of the previous run: its shards (name -> the fingerprints they were decided with)
    and its index (the manifest's ``index`` section)."""

    old: dict[str, dict]
    index: dict

    @property
    def n(self) -> int:
        return int(self.index["records"])


def index_key(run) -> str:
    """Everything besides the input that decides a dedup run's drops: equal keys, reusable index. (merge_chunk
    only sizes the global pass's tasks.)"""
    cfg = {k: v for k, v in run.cfg.items() if k != "merge_chunk"}
    return params_hash({"config": cfg, "code": stage_hash(run.stage.code_packages, {}),
                        "external": run.stage.external_inputs(run)})


def generation(run, tasks) -> str:
    """The id of the index a run writes: its index key and inputs (its folder, and ``added`` of its entries)."""
    return params_hash({"index": index_key(run), "inputs": {t.shard: t.fingerprints for t in tasks}})


def index_fingerprint(segments: list[dict]) -> str:
    return hashlib.sha256(canonical_json([{"files": {k: v["sha256"] for k, v in seg["files"].items()},
                                           "records": seg["records"]} for seg in segments]).encode()).hexdigest()


def segments(index: dict) -> list[dict]:
    """The index's segments in hid order ({generation, records, files}); an index written before segments
    existed is one segment."""
    if "segments" in index:
        return index["segments"]
    return [{"generation": index["generation"], "records": index["records"], "files": index["files"]}]


def segment_files(index: dict, name: str) -> list[dict]:
    """One file (``exact.bin``, ``records.parquet``, ...) of every segment, in hid order, each with its
    segment's first hid and entry count (``first``, ``count``)."""
    out, first = [], 0
    for seg in segments(index):
        if name in seg["files"]:
            out.append({**seg["files"][name], "first": first, "count": int(seg["records"])})
        first += int(seg["records"])
    return out


def segment_dirs(index: dict) -> set[str]:
    return {index_dir(e) for seg in segments(index) for e in seg["files"].values()}


def find_refresh(run, refs) -> Refresh | None:
    """The refresh this run is, or None (a full build). Checks settings, the old shards and the index files."""
    from pipelines.core.runner import fragment_rel

    cfg = run.cfg
    if not cfg["history"] or cfg["semantic"]["enabled"]:
        return None
    top = load_manifest_if_any(run.out_dir) or {}
    index = top.get("index")
    if not index or index.get("key") != index_key(run):
        return None
    current = {ref.name: ref.fingerprint for ref in refs}
    old = {}
    for shard in top.get("shards", {}):
        fragment = run.store.read_json(fragment_rel("", shard))
        if not fragment or shard not in current:
            return None
        inputs = fragment.get("inputs") or {}
        if any(current.get(name) != fp for name, fp in inputs.items() if name != INDEX_INPUT):
            return None  # an input it was decided with changed or is gone
        old[shard] = inputs
    if not all(run.store.intact(entry.get("rel", name), entry)
               for seg in segments(index) for name, entry in seg["files"].items()):
        return None
    return Refresh(old, index)


def local_file(store, entry: dict) -> Path:
    """A local copy (or the file itself) of an index file."""
    return fetch_uri(entry["uri"]) if entry.get("uri") else store.fetch(entry["rel"])


def read_records(store, files: list[dict], columns: list[str] | None = None) -> pa.Table:
    """The index's records table (id, source, added per hid) over all segments, or some of its columns."""
    tables = []
    for entry in files:
        with pq.ParquetFile(local_file(store, entry)) as f:  # not pq.read_table: it imports pyarrow.dataset (slow)
            tables.append(f.read(columns=columns))
    return pa.concat_tables(tables) if tables else RECORDS_SCHEMA.empty_table().select(columns or RECORDS_SCHEMA.names)


def take_records(store, files: list[dict], hids: np.ndarray, columns: list[str]) -> dict[str, list]:
    """Some entries' columns, by hid: only the segments and row groups holding them are read."""
    hids = np.asarray(hids, np.int64)
    out = {c: [None] * len(hids) for c in columns}
    firsts = np.array([e["first"] for e in files], np.int64)
    seg = np.searchsorted(firsts, hids, "right") - 1
    for k in np.unique(seg).tolist():
        mine = np.flatnonzero(seg == k)
        local = hids[mine] - firsts[k]
        with pq.ParquetFile(local_file(store, files[k])) as f:
            size = f.metadata.row_group(0).num_rows if f.metadata.num_row_groups else 1
            groups = np.unique(local // size).tolist()
            table = f.read_row_groups(groups, columns=columns)
            # a hid's row in what was read: its offset in its group plus the rows of the groups read before it
            starts = dict(zip(groups, np.cumsum([0] + [f.metadata.row_group(g).num_rows for g in groups[:-1]]).tolist()))
        rows = np.array([starts[g] + r for g, r in zip((local // size).tolist(), (local % size).tolist())], np.int64)
        for c in columns:
            values = table.column(c).take(rows).to_pylist()
            for i, v in zip(mine.tolist(), values):
                out[c][i] = v
    return out


def read_signature_rows(store, files: list[dict], hids: np.ndarray, num_perm: int) -> np.ndarray:
    """Some entries' stored signatures, by hid (one ranged read of each)."""
    row_dtype = np.dtype((SIG_DTYPE, num_perm))
    firsts = np.array([e["first"] for e in files], np.int64)
    out = np.empty((len(hids), num_perm), SIG_DTYPE)
    paths: dict[int, Path] = {}
    for i, h in enumerate(np.asarray(hids, np.int64).tolist()):
        k = int(np.searchsorted(firsts, h, "right") - 1)
        if k not in paths:
            paths[k] = local_file(store, files[k])
        out[i] = np.fromfile(paths[k], row_dtype, count=1, offset=(h - int(firsts[k])) * row_dtype.itemsize)[0]
    return out


def source_salts(sources: list) -> np.ndarray:
    """Per record, a 64-bit salt of its source (scope ``snapshot``): XORed into every key, so records of
    different sources never share one and dedup runs within each source (each crawl is a source)."""
    cache: dict = {}
    out = np.empty(len(sources), np.uint64)
    for i, s in enumerate(sources):
        if s not in cache:
            cache[s] = np.frombuffer(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "<u8")[0]
        out[i] = cache[s]
    return out


# ---------------------------------------------------------------- executor tasks

def stage_history(job: dict) -> dict:
    """One key kind of the index into the run's scratch as the key file of one more "shard" (the index), with
    the partition offsets of this run's hash ranges: only the entries whose key a new record has."""
    band = job["kind"].startswith("band_")

    def as_keys(src: np.ndarray) -> np.ndarray:
        src = src[np.argsort(src["k"], kind="stable")]  # equal keys in hid order: segments are in hid order
        if not band:
            return src
        rec = np.zeros(len(src), spill.BAND_DTYPE)
        rec["k"], rec["r"], rec["s"], rec["o"] = src["k"], src["r"], HIST_SHARD, src["r"].astype(np.uint64)
        return rec

    offsets = stage_matches(job["scratch"], job["rel"], job["probe"], len(job["bounds"]) + 1,
                            spill.BAND_DTYPE if band else spill.EXACT_DTYPE,
                            [local_file(job["store"], e) for e in job["entries"]],
                            BAND_INDEX_DTYPE if band else spill.EXACT_DTYPE, as_keys)
    return {"kind": job["kind"], "offsets": offsets}


def stage_matches(scratch, rel: str, new_files: list, parts: int, new_dtype: np.dtype, index_files: list[Path],
                  index_dtype: np.dtype, convert) -> np.ndarray:
    """Write to ``rel`` the index rows whose key ``k`` one of the new records has, one hash range at a time
    (``new_files``: the new shards' files as (rel, partition offsets), so memory holds one range's new keys),
    each range's rows as ``convert`` makes them; returns the partition offsets."""
    counts = [0]
    with spill.writing(scratch, rel) as path, open(path, "wb") as out:
        for p in range(parts):
            new = spill.read_parts(scratch, new_dtype, spill.slices(new_files, p))
            found = [probe(f, index_dtype, np.unique(new["k"])) for f in index_files] if len(new) else []
            rec = convert(np.concatenate(found) if found else np.zeros(0, index_dtype))
            out.write(rec.tobytes())
            counts.append(len(rec))
    return np.cumsum(counts).astype(np.int64)


def probe(path: Path, dtype: np.dtype, keys: np.ndarray) -> np.ndarray:
    """The rows of a key file (sorted by ``k``) whose ``k`` is one of ``keys`` (sorted, distinct)."""
    if not path.stat().st_size or not len(keys):
        return np.zeros(0, dtype)
    table = np.memmap(path, dtype, mode="r")
    lo = np.searchsorted(table["k"], keys, "left")
    hi = np.searchsorted(table["k"], keys, "right")
    hit = hi > lo
    lo, hi = lo[hit], hi[hit]
    if not len(lo):
        return np.zeros(0, dtype)
    # every row of every [lo, hi) run, without a Python loop over keys
    lengths = hi - lo
    rows = np.repeat(lo - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
    out = np.array(table[rows])
    del table
    return out


def write_index_keys(job: dict) -> dict:
    """One kind's file of this run's segment: the key of every new record kept, with its hid, sorted."""
    scratch, kind = job["scratch"], job["kind"]
    hid = rank_to_hid(scratch, job)
    band = kind.startswith("band_")
    rec = spill.read_parts(scratch, spill.BAND_DTYPE if band else spill.EXACT_DTYPE, job["parts"])
    mine = hid[rec["r"] - job["n_hist"]]  # the parts are the new shards': ranks from n_hist on
    rec, mine = rec[mine >= 0], mine[mine >= 0]
    if band:
        out = np.empty(len(rec), BAND_INDEX_DTYPE)
        out["k"], out["r"] = rec["k"], mine
    else:
        out = rec.copy()
        out["r"] = mine
    out = out[np.lexsort((out["r"], out["k"]))]  # by key, then hid: the same bytes however the input was cut
    entry = job["store"].put_data(job["rel"], lambda tmp: out.tofile(tmp), ".bin")
    return {"kind": kind, "entry": {**entry, "rel": job["rel"]}}


def rank_to_hid(scratch, job: dict) -> np.ndarray:
    """rank - n_hist -> hid (-1: not kept) of every new record: each node range's kept records follow the
    index's entries in keep order (``hids``: the range's kept-positions file, first rank, first hid)."""
    hid = np.full(job["n"] - job["n_hist"], -1, np.int64)
    for rel, lo, base in job["hids"]:
        position = spill.load_array(scratch, rel)
        lo -= job["n_hist"]
        hid[lo:lo + len(position)] = np.where(position >= 0, position + base, -1)
    return hid


def write_index_signatures(job: dict) -> dict:
    """The segment's signatures file in hid order: each node range's kept records' (pass 1 spilled every new
    record's signature per shard). Streamed one node range at a time: memory holds one range's rows."""
    scratch, num_perm = job["scratch"], job["num_perm"]
    row_dtype = np.dtype((SIG_DTYPE, num_perm))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for rel, _ in job["survivors"]:  # ranges in rank order, each in rank order: hid order
                kept = spill.load_array(scratch, rel)
                rows = np.empty(len(kept), row_dtype)
                for s in np.unique(kept["shard"]).tolist():
                    mine = kept["shard"] == s
                    spilled = np.memmap(scratch.fetch(job["signatures"][s]), row_dtype, mode="r")
                    rows[mine] = spilled[kept["row"][mine]]  # pages of the rows it needs, not the file
                    del spilled
                out.write(rows.tobytes())

    entry = job["store"].put_data(job["rel"], write, ".bin")
    return {"kind": SIGNATURES, "entry": {**entry, "rel": job["rel"]}}


RECORDS_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("added", pa.string())])


def write_index_ids(job: dict) -> dict:
    """The segment's ``ids.bin``: each kept record's 128-bit id hash (as the dedup id check hashes ids) and
    its hid, sorted by hash."""
    from pipelines.dedup.rank import id_hashes

    pieces = []
    for rel, base in job["survivors"]:
        kept = spill.load_array(job["scratch"], rel)
        hashed = id_hashes([i.decode() for i in kept["id"].tolist()])
        rec = np.empty(len(kept), ID_INDEX_DTYPE)
        rec["k"], rec["k2"], rec["r"] = hashed[:, 0], hashed[:, 1], base + np.arange(len(kept))
        pieces.append(rec)
    out = np.concatenate(pieces) if pieces else np.zeros(0, ID_INDEX_DTYPE)
    out = out[np.lexsort((out["k2"], out["k"]))]
    entry = job["store"].put_data(job["rel"], lambda tmp: out.tofile(tmp), ".bin")
    return {**entry, "rel": job["rel"]}


def write_index_records(job: dict) -> dict:
    """The segment's records table: each node range's kept records (id, source, this run), streamed in row
    groups of the shard format's size (the same bytes however the ranges were cut)."""

    def batches():
        for rel in job["survivors"]:
            kept = spill.load_array(job["scratch"], rel)
            yield pa.table({"id": pa.array([i.decode() for i in kept["id"].tolist()], pa.string()),
                            "source": pa.array([job["sources"][c] for c in kept["src"].tolist()], pa.string()),
                            "added": pa.array([job["added"]] * len(kept), pa.string())}, schema=RECORDS_SCHEMA)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, RECORDS_SCHEMA, compression="zstd", write_statistics=True, store_schema=True) as w:
            pending: list[pa.Table] = []
            for table in batches():
                pending.append(table)
                while sum(t.num_rows for t in pending) >= ROW_GROUP_SIZE:
                    whole = pa.concat_tables(pending)
                    w.write_table(whole.slice(0, ROW_GROUP_SIZE), row_group_size=ROW_GROUP_SIZE)
                    pending = [whole.slice(ROW_GROUP_SIZE)]
            rest = pa.concat_tables(pending) if pending else RECORDS_SCHEMA.empty_table()
            if rest.num_rows:
                w.write_table(rest, row_group_size=ROW_GROUP_SIZE)

    entry = job["store"].put_data(job["rel"], write, ".parquet")
    return {**entry, "rel": job["rel"]}


def index_dir(entry: dict) -> str:
    """The generation folder (``index/<run>``) an index file entry lives in."""
    return entry["rel"].split("/")[1]


def remove_other_indexes(run, keep: set[str]) -> None:
    """Delete index generations other than ``keep`` (a local store's folders; the objects of a
    content-addressed store are never deleted: an older data version may list them)."""
    if run.store.content_addressed or not isinstance(run.store, LocalStore):
        return
    base = run.store.local_root() / INDEX
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.name not in keep:
            shutil.rmtree(d) if d.is_dir() else d.unlink()
