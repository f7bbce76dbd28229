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

Index files (under ``index/<run>/`` of the stage's store, listed with their sha256 in ``_manifest.json``
``index``, versioned by DVC with the data):

- ``records.parquet``: per index entry (``hid``, its row number): ``id``, ``source`` and ``added`` (the
  dedup stage key of the run that kept it, so a drop names the run, and so the data version, it lost to);
- ``exact.bin`` / ``url.bin``: the 128-bit exact-text / URL keys with their hid, sorted by key (the spill
  format of pipelines.dedup.spill: any hash-range partition is a contiguous slice);
- ``band_<b>.bin``: MinHash band keys with their hid, sorted by key;
- ``signatures.bin`` (when ``verify_threshold`` is set): each entry's MinHash signature (low 32 bits of
  each of the ``bands * rows`` minima), in hid order. Candidate pairs of a new record with an index entry
  are verified by the signatures' agreement (an unbiased estimate of the Jaccard similarity, standard error
  ~0.04 at 112 permutations), since the index keeps no texts and no shingles: about 0.5 KB per record.

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
RECORDS = "records.parquet"
SIGNATURES = "signatures.bin"


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


def index_fingerprint(files: dict[str, dict], records: int) -> str:
    return hashlib.sha256(canonical_json({"files": {k: v["sha256"] for k, v in files.items()},
                                          "records": records}).encode()).hexdigest()


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
    if not all(run.store.intact(entry.get("rel", name), entry) for name, entry in index["files"].items()):
        return None
    return Refresh(old, index)


def local_file(store, entry: dict) -> Path:
    """A local copy (or the file itself) of an index file."""
    return fetch_uri(entry["uri"]) if entry.get("uri") else store.fetch(entry["rel"])


def read_records_file(store, entry: dict, columns: list[str] | None = None) -> pa.Table:
    """The index's records table (id, source, added per hid), or some of its columns."""
    with pq.ParquetFile(local_file(store, entry)) as f:  # not pq.read_table: it imports pyarrow.dataset (slow)
        return f.read(columns=columns)


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
    """One index file into the run's scratch as the key file of one more "shard" (the index), with the
    partition offsets of this run's hash ranges."""
    store, kind = job["scratch"], job["kind"]
    path = local_file(job["store"], job["entry"])
    if kind.startswith("band_"):
        src = np.fromfile(path, BAND_INDEX_DTYPE)
        rec = np.zeros(len(src), spill.BAND_DTYPE)
        rec["k"], rec["r"], rec["s"], rec["o"] = src["k"], src["r"], HIST_SHARD, src["r"].astype(np.uint64)
    else:
        rec = np.fromfile(path, spill.EXACT_DTYPE)
    return {"kind": kind, "offsets": spill.write_partitioned(store, job["rel"], rec, rec["k"], job["bounds"])}


def stage_signatures(job: dict) -> None:
    path = local_file(job["store"], job["entry"])
    with spill.writing(job["scratch"], job["rel"]) as out:
        out.write_bytes(path.read_bytes())


def write_index_keys(job: dict) -> dict:
    """One kind's index file: every kept record's key (index entries and new records), hid for rank, sorted."""
    scratch, kind = job["scratch"], job["kind"]
    hid = rank_to_hid(scratch, job)
    band = kind.startswith("band_")
    rec = spill.read_parts(scratch, spill.BAND_DTYPE if band else spill.EXACT_DTYPE, job["parts"])
    rec = rec[hid[rec["r"]] >= 0]
    if band:
        out = np.empty(len(rec), BAND_INDEX_DTYPE)
        out["k"], out["r"] = rec["k"], hid[rec["r"]]
    else:
        out = rec.copy()
        out["r"] = hid[rec["r"]]
    out = out[np.lexsort((out["r"], out["k"]))]  # by key, then hid: the same bytes however the input was cut
    entry = job["store"].put_data(job["rel"], lambda tmp: out.tofile(tmp), ".bin")
    return {"kind": kind, "entry": {**entry, "rel": job["rel"]}}


def rank_to_hid(scratch, job: dict) -> np.ndarray:
    """rank -> hid (-1: not kept) of every record: the index's entries keep theirs; each node range's kept
    records follow in keep order (``hids``: the range's kept-positions file, first rank, first hid)."""
    hid = np.full(job["n"], -1, np.int64)
    hid[:job["n_hist"]] = np.arange(job["n_hist"])
    for rel, lo, base in job["hids"]:
        position = spill.load_array(scratch, rel)
        hid[lo:lo + len(position)] = np.where(position >= 0, position + base, -1)
    return hid


def write_index_signatures(job: dict) -> dict:
    """The signatures file in hid order: the index's own rows, then each node range's kept records' (pass 1
    spilled every new record's signature per shard). Streamed one node range at a time: memory holds one
    range's rows, whatever the index's size."""
    scratch, num_perm = job["scratch"], job["num_perm"]
    row_dtype = np.dtype((SIG_DTYPE, num_perm))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            if job["history"]:
                with open(scratch.fetch(job["history"]), "rb") as old:
                    shutil.copyfileobj(old, out)
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


def write_index_records(job: dict) -> dict:
    """The records table: the earlier entries, then each node range's kept records (id, source, this run),
    streamed in row groups of the shard format's size (the same bytes however the ranges were cut)."""

    def batches():
        if job["earlier"] is not None:
            with pq.ParquetFile(local_file(job["store"], job["earlier"])) as f:
                yield from (pa.Table.from_batches([b]) for b in f.iter_batches(columns=RECORDS_SCHEMA.names))
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
