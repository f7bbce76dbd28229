"""Pass 1 of dedup, one task per input shard (on the executor): keys of every record, written to scratch.

``hash_shard`` reads its records' keep ranks (pipelines.dedup.rank) and their
text (and url when URL dedup is on); hashes every word once (vectorised,
pipelines.dedup.minhash.text_word_hashes) and derives from those the exact
key, the MinHash signature and the decontamination n-grams; and writes, per
key kind (exact, url, band b), one key file sorted by hash and cut into the
hash-range partitions of the bucket tasks (pipelines.dedup.spill), each entry
carrying the record's keep rank (and, for bands, where its shingles are).
Records dropped as contaminated get no keys: they take no part in dedup. The
contamination flags stay in scratch for the shard's pass 3; the ranks of the
records they drop go to a file by node range, for the finalize tasks.
With scope ``snapshot`` every key is salted with the record's source
(pipelines.dedup.history.source_salts), so dedup runs within each source. With
the dedup index on and verification on, each record's signature is spilled too
(low 32 bits, ``spill.signature_rel``): the index keeps the kept ones.
"""
from __future__ import annotations

import numpy as np

from pipelines.core.shards import iter_batches, read_schema
from pipelines.dedup import cross_source, history, spill
from pipelines.dedup.exact import exact_hashes
from pipelines.dedup.rank import RANK_DTYPE
from pipelines.dedup.minhash import MinHasher, text_word_hashes, word_sequence_digests
from pipelines.dedup.timing import PhaseClock
from pipelines.dedup.urls import url_keys

EXACT, URL = "exact", "url"


def band_kind(b: int) -> str:
    return f"band_{b:03d}"


def pq_columns(path: str) -> list[str]:
    return read_schema(path).names


def hash_shard(job: dict) -> dict:
    """Pass 1 for one shard: write its partitioned key files (and shingles) and its contamination flags; return
    the files' partition offsets and timings."""
    path, shard, cfg, store, index = (job[k] for k in ("path", "shard", "cfg", "store", "index"))
    clock = PhaseClock()
    with clock("read"):
        rank = shard_ranks(store, job["ranks"], job["rows"])
    exact_cfg, mh_cfg = cfg["exact"], cfg["minhash"]
    hasher = MinHasher(mh_cfg["ngram"], mh_cfg["bands"], mh_cfg["rows"], mh_cfg["seed"]) if mh_cfg["enabled"] else None
    use_url = exact_cfg["url"]
    if use_url and "url" not in set(pq_columns(path)):
        raise ValueError(f"dedup.exact.url is on but {path} has no url column")
    by_source = cfg["scope"] == "snapshot"
    keep_sigs = hasher is not None and cfg["history"] and mh_cfg["verify_threshold"] is not None
    # With the default exact settings the exact key is the word sequence MinHash reads: hash words once for all.
    shared = exact_cfg["lowercase"] and exact_cfg["strip_punctuation"]
    need_words = hasher is not None or index is not None or (exact_cfg["enabled"] and shared)
    exact, bands, counts, starts, contam, url_rows, url_hashes, salts, sigs = [], [], [], [], [], [], [], [], []
    # Jaccard verification reads the shingles back from scratch files instead of re-reading the texts.
    shingle_out = spill.ShingleWriter(store, shard) if hasher is not None and mh_cfg["verify_threshold"] is not None else None
    batches = iter_batches(path, columns=["text", *(["url"] if use_url else []), *(["source"] if by_source else [])])
    seen = 0
    while True:
        with clock("read"):
            batch = next(batches, None)
            if batch is None:
                break
            texts = batch.column("text").to_pylist()
            if by_source:
                salts.append(history.source_salts(batch.column("source").to_pylist()))
        if use_url:
            with clock("url"):
                rows, keys = url_keys(batch.column("url").to_pylist())
                url_rows.append(rows + seen)
                url_hashes.append(keys)
        seen += len(texts)
        if need_words:
            with clock("words"):
                word_hashes, lengths = text_word_hashes(texts)
        if exact_cfg["enabled"]:
            with clock("exact"):
                exact.append(word_sequence_digests(word_hashes, lengths) if shared else exact_hashes(
                    texts, lowercase=exact_cfg["lowercase"], strip_punctuation=exact_cfg["strip_punctuation"]))
        if hasher is not None:
            with clock("minhash"):
                shingles, n_shingles = hasher.shingles_of_words(word_hashes, lengths, texts)
                signatures = hasher.signatures_of_shingles(shingles, n_shingles)
                bands.append(hasher.band_hashes(signatures))
                if keep_sigs:
                    sigs.append((signatures & np.uint64(0xFFFFFFFF)).astype(history.SIG_DTYPE))  # (records, num_perm)
            if shingle_out is not None:
                with clock("spill"):
                    starts.append(shingle_out.add(shingles, n_shingles))
                    counts.append(n_shingles)
        if index is not None:
            with clock("decontam"):
                contam.append(index.match_words(word_hashes, lengths))
    if len(rank) != seen:
        raise RuntimeError(f"dedup: {path} changed between the keep rank and pass 1 ({len(rank)} != {seen} records)")
    n_sets = len(index.names) if index is not None else 0
    flags = np.concatenate(contam) if contam else np.zeros((seen, n_sets), bool)
    active = ~flags.any(axis=1) if cfg["decontam"]["mode"] == "drop" else np.ones(seen, bool)
    salt = _cat(salts, (0,)) if by_source else np.zeros(seen, np.uint64)
    url_rows_all = _cat(url_rows, (0,), np.int64)
    with clock("spill"):
        if shingle_out is not None:
            shingle_out.close()
        if keep_sigs:
            with spill.writing(store, spill.signature_rel(shard)) as out:
                _cat(sigs, (0, hasher.num_perm), history.SIG_DTYPE).tofile(out)
        offsets = write_keys(store, shard, job["bounds"], rank, active,
                             exact=_cat(exact, (0, 2)) ^ salt[:, None] if exact_cfg["enabled"] else None,
                             xsource=(_cat(exact, (0, 2)), salt) if by_source and exact_cfg["enabled"] else None,
                             url=(url_rows_all, _cat(url_hashes, (0, 2)) ^ salt[url_rows_all, None]) if use_url else None,
                             bands=_cat(bands, (0, mh_cfg["bands"])) ^ salt[:, None] if hasher is not None else None,
                             shingles=(shard, _cat(counts, (0,), np.int64), _cat(starts, (0,))))
        flagged = np.flatnonzero(flags.any(axis=1))
        contam = write_contamination(store, shard, flagged, flags[flagged], rank, job["node_bounds"], cfg)
    return {"offsets": offsets, "contam": contam, "phases": clock.phases}


def shard_ranks(store, parts: list[tuple[str, int, int]], rows: int) -> np.ndarray:
    """rank[row] of one shard's records, from the rank tasks' files."""
    rec = spill.read_parts(store, RANK_DTYPE, parts)
    if len(rec) != rows or (rows and not np.array_equal(np.sort(rec["row"]), np.arange(rows))):
        raise RuntimeError(f"dedup: the keep rank covers {len(rec)} rows of a shard of {rows}")
    rank = np.empty(rows, np.int64)
    rank[rec["row"]] = rec["rank"]
    return rank


def contamination_rel(shard: int) -> str:
    return f"contam/s{shard:05d}.npy"


def dropped_rel(shard: int) -> str:
    return f"contam/s{shard:05d}.dropped.bin"


def write_contamination(store, shard: int, rows: np.ndarray, flags: np.ndarray, rank: np.ndarray,
                        node_bounds: np.ndarray, cfg: dict) -> dict:
    """The shard's flagged rows with their benchmark flags (for its pass 3), and in mode ``drop`` the ranks of
    those rows by node range (for the finalize tasks). Returns the count and the ranks file's offsets."""
    if flags.shape[1]:  # decontamination on
        rec = np.empty(len(rows), np.dtype([("row", "<u4"), ("flags", "u1", (flags.shape[1],))]))
        rec["row"], rec["flags"] = rows, flags
        spill.save_array(store, contamination_rel(shard), rec)
    dropped = np.sort(rank[rows]) if cfg["decontam"]["mode"] == "drop" else np.zeros(0, np.int64)
    return {"flagged": len(rows),
            "dropped": spill.write_partitioned(store, dropped_rel(shard), dropped, dropped, node_bounds)}


def _cat(parts: list, empty_shape: tuple, dtype=np.uint64) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)


def write_keys(store, shard: int, bounds: np.ndarray, rank: np.ndarray, active: np.ndarray, *, exact, url, bands,
               shingles, xsource=None) -> dict[str, np.ndarray]:
    """Write a shard's key files (active records only); returns kind -> partition row offsets. ``xsource``:
    scope ``snapshot``'s unsalted exact keys and source salts (pipelines.dedup.cross_source)."""
    offsets = {}
    if exact is not None:
        rows = np.flatnonzero(active)
        offsets[EXACT] = _write_exact(store, spill.key_rel(shard, EXACT), exact[rows], rank[rows], bounds)
    if xsource is not None:
        rows = np.flatnonzero(active)
        keys, salt = xsource
        offsets[cross_source.KIND] = cross_source.write_keys(store, spill.key_rel(shard, cross_source.KIND), keys[rows],
                                                             salt[rows], rank[rows], bounds)
    if url is not None:
        rows, keys = url
        mine = active[rows]
        offsets[URL] = _write_exact(store, spill.key_rel(shard, URL), keys[mine], rank[rows[mine]], bounds)
    if bands is not None:
        rows = np.flatnonzero(active)
        shard_id, counts, starts = shingles
        rec = np.zeros(len(rows), spill.BAND_DTYPE)
        rec["r"], rec["s"] = rank[rows], shard_id
        if len(counts):  # verification on: where each record's shingles are
            rec["c"], rec["o"] = counts[rows], starts[rows]
        for b in range(bands.shape[1]):
            rec["k"] = bands[rows, b]
            offsets[band_kind(b)] = spill.write_partitioned(store, spill.key_rel(shard, band_kind(b)), rec, rec["k"], bounds)
    return offsets


def _write_exact(store, rel: str, keys: np.ndarray, rank: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    rec = np.empty(len(keys), spill.EXACT_DTYPE)
    rec["k"], rec["k2"], rec["r"] = keys[:, 0], keys[:, 1], rank
    return spill.write_partitioned(store, rel, rec, rec["k"], bounds)
