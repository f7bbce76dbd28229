"""Tokenizing a blend, one input shard per task: tokens go to scratch, the driver gets lengths.

Every row of a blend is a document (a record repeated by upsampling appears once per copy).
A task tokenizes the shard's distinct records once each (+ EOS; with MeCo after a no-loss
``URL: <domain>`` prefix), writes their tokens to one scratch file, and returns per row only
what packing needs: where its tokens start in that file, how many there are, how many of
them are the prefix, plus the id, source and copy for the lineage and a hash of the text
(a record id must mean one text everywhere).
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa

from pipelines.core.schema import domain_of
from pipelines.core.shards import read_schema, read_shard
from pipelines.core.store import fetch_uri
from pipelines.pack.tokenizer import encode_task

COLUMNS = ("id", "source", "text", "blend_copy", "domain", "url")


def meco_prefix(domain: str | None, url: str | None, source: str) -> str:
    """MeCo's metadata prefix: the document's domain (its source name when it has no URL)."""
    return f"URL: {domain or domain_of(url) or source}\n\n"


def tokens_rel(phase: str, shard_index: int) -> str:
    return f"tokens/{phase}/s{shard_index:05d}.npy"


def encode_shard(job: tuple) -> dict:
    """One input shard of a blend -> its tokens in scratch; per row: begin, length (EOS included), prefix."""
    uri, phase, shard_index, tokenizer, eos_id, batch_docs, meco, scratch = job
    names = read_schema(uri).names
    missing = [c for c in ("id", "source", "text") if c not in names]
    if missing:
        raise ValueError(f"pack: {uri} lacks column(s) {missing}")
    table = read_shard(uri, [c for c in COLUMNS if c in names])
    ids = table.column("id").to_pylist()
    sources = table.column("source").to_pylist()
    copies = table.column("blend_copy").to_pylist() if "blend_copy" in names else [0] * table.num_rows
    texts = table.column("text").to_pylist()
    first: dict[str, int] = {}
    for row, rid in enumerate(ids):
        if first.setdefault(rid, row) != row and texts[row] != texts[first[rid]]:
            raise ValueError(f"pack: record {rid} appears with two different texts (ids must be unique)")
    unique_rows = list(first.values())  # repeats share one tokenization
    prefixes = None
    if meco:
        col = lambda name: table.column(name).to_pylist() if name in names else [None] * table.num_rows  # noqa: E731
        domains, urls = col("domain"), col("url")
        prefixes = [meco_prefix(domains[r], urls[r], sources[r]) for r in unique_rows]
    path, digest = str(fetch_uri(tokenizer["uri"])), tokenizer["sha256"]
    results = [encode_task((path, digest, [texts[r] for r in unique_rows[b:b + batch_docs]],
                            prefixes[b:b + batch_docs] if prefixes is not None else None))
               for b in range(0, len(unique_rows), batch_docs)]
    flat = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.uint32)
    body = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int64)
    prefix = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int64)
    lengths = body + 1  # + EOS after every document
    eos_at = np.cumsum(lengths) - 1
    tokens = np.empty(int(lengths.sum()), dtype=np.uint32)
    is_text = np.ones(len(tokens), dtype=bool)
    is_text[eos_at] = False
    tokens[is_text] = flat
    tokens[eos_at] = eos_id
    buf = io.BytesIO()
    np.save(buf, tokens, allow_pickle=False)
    scratch.write_bytes(tokens_rel(phase, shard_index), buf.getvalue())
    begin = np.cumsum(lengths) - lengths
    slot = {rid: k for k, rid in enumerate(first)}
    row_slot = np.asarray([slot[rid] for rid in ids], dtype=np.int64)
    empty = np.zeros(0, np.int64)
    return {
        "ids": ids, "sources": sources, "copies": copies,
        "begin": begin[row_slot] if len(row_slot) else empty,
        "length": lengths[row_slot] if len(row_slot) else empty,
        "prefix": prefix[row_slot] if len(row_slot) else empty,
        "text_hash": {rid: hashlib.blake2b(texts[r].encode("utf-8", "surrogatepass"), digest_size=8).digest()
                      for rid, r in first.items()},
        "chars": int(sum(len(texts[r]) for r in unique_rows)),
    }


def check_one_text_per_id(parts: list[dict]) -> None:
    """Across shards, a record id must carry one text (the per-shard check cannot see this)."""
    seen: dict[str, bytes] = {}
    for part in parts:
        for rid, h in part["text_hash"].items():
            if seen.setdefault(rid, h) != h:
                raise ValueError(f"pack: record {rid} appears with two different texts (ids must be unique)")


def tokenizer_sample(run, refs, max_chars: int) -> list[str]:
    """Unique phase-1 documents in id order until ``max_chars`` (the last one cut to fit): the same sample as
    ``tokenizer.sample_texts`` over the whole blend, but only the sampled texts ever reach the driver."""
    parts = run.map(_id_lengths, [ref.uri for ref in refs])
    length_of: dict[str, int] = {}
    for ids, lengths in parts:
        for i, n in zip(ids, lengths):
            length_of.setdefault(i, n)
    chosen: dict[str, int] = {}  # id -> characters taken
    budget = max_chars
    for i in sorted(length_of):
        if budget <= 0:
            break
        take = min(length_of[i], budget)
        chosen[i] = take
        budget -= take
    found: dict[str, str] = {}
    for part in run.map(_texts_of, [(ref.uri, chosen) for ref in refs]):
        for i, t in part.items():
            found.setdefault(i, t)
    return [found[i][:n] for i, n in sorted(chosen.items())]


def _id_lengths(uri: str) -> tuple[list[str], list[int]]:
    t = read_shard(uri, ["id", "text"])
    import pyarrow.compute as pc

    return t.column("id").to_pylist(), pc.fill_null(pc.utf8_length(t.column("text")), 0).to_pylist()


def _texts_of(job: tuple[str, dict[str, int]]) -> dict[str, str]:
    uri, chosen = job
    t = read_shard(uri, ["id", "text"])
    mask = pa.array([i in chosen for i in t.column("id").to_pylist()])
    t = t.filter(mask)
    return dict(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
