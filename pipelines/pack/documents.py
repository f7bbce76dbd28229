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
from pipelines.pack.related import signatures
from pipelines.pack.tokenizer import encode_task

COLUMNS = ("id", "source", "text", "blend_copy", "domain", "url")


def meco_prefix(domain: str | None, url: str | None, source: str) -> str:
    """MeCo's metadata prefix: the document's domain (its source name when it has no URL)."""
    return f"URL: {domain or domain_of(url) or source}\n\n"


def tokens_rel(phase: str, shard_index: int) -> str:
    return f"tokens/{phase}/s{shard_index:05d}.npy"


def encode_shard(job: tuple) -> dict:
    """One input shard of a blend -> its tokens in scratch; per row: begin, length (EOS included), prefix."""
    uri, phase, shard_index, tokenizer, eos_id, batch_docs, meco, scratch, *rest = job
    related = bool(rest and rest[0])  # pack.order: related: a SimHash signature per row too (related.py)
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
    extra = {}
    if related:
        sig = signatures([texts[r] for r in unique_rows])
        extra["signature"] = sig[row_slot] if len(row_slot) else np.zeros(0, np.uint64)
    return {**extra,
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


def tokenizer_sample(run, refs, max_chars: int) -> tuple[list[str], list[str]]:
    """(texts, their sources): unique phase-1 documents in id order until ``max_chars`` (the last one cut to
    fit): the same sample as ``tokenizer.sample_texts`` over the whole blend, but only the sampled texts ever
    reach the driver."""
    length_of, _ = _lengths_and_sources(run, refs)
    chosen: dict[str, int] = {}  # id -> characters taken
    budget = max_chars
    for i in sorted(length_of):
        if budget <= 0:
            break
        take = min(length_of[i], budget)
        chosen[i] = take
        budget -= take
    found = _fetch(run, refs, chosen)
    picked = sorted(chosen.items())
    return [found[i][0][:n] for i, n in picked], [found[i][1] for i, _ in picked]


AUDIT_PIECE_CHARS = 1000


def audit_sample(run, refs, chars_per_source: int) -> dict[str, list[str]]:
    """Per source, about ``chars_per_source`` of its unique phase-1 text for the mixture audit to count pairs
    on: every k-th ``AUDIT_PIECE_CHARS`` piece of every document (k per source, the offset a hash of the id),
    so a source of a few long documents is sampled across all of them, not by its first one. Workers cut the
    pieces; only the sample reaches the driver."""
    length_of, source_of = _lengths_and_sources(run, refs)
    total: dict[str, int] = {}
    for i, n in length_of.items():
        total[source_of[i]] = total.get(source_of[i], 0) + n
    stride = {s: max(1, -(-c // chars_per_source)) for s, c in total.items()}
    found: dict[str, tuple[str, list[str]]] = {}
    for part in run.map(_audit_pieces, [(ref.uri, stride) for ref in refs]):
        for i, v in part.items():
            found.setdefault(i, v)
    by_source: dict[str, list[str]] = {}
    for i in sorted(found):
        source, pieces = found[i]
        by_source.setdefault(source, []).extend(pieces)
    return {s: by_source[s] for s in sorted(by_source) if by_source[s]}


def _audit_pieces(job: tuple[str, dict[str, int]]) -> dict[str, tuple[str, list[str]]]:
    uri, stride = job
    t = read_shard(uri, ["id", "source", "text"])
    out: dict[str, tuple[str, list[str]]] = {}
    for i, s, text in zip(t.column("id").to_pylist(), t.column("source").to_pylist(), t.column("text").to_pylist()):
        if i in out or not text:
            continue
        k = stride[s]
        offset = int.from_bytes(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "big") % k
        out[i] = (s, [text[j:j + AUDIT_PIECE_CHARS] for j in range(0, len(text), AUDIT_PIECE_CHARS)
                      if (j // AUDIT_PIECE_CHARS + offset) % k == 0])
    return out


def _lengths_and_sources(run, refs) -> tuple[dict[str, int], dict[str, str]]:
    length_of: dict[str, int] = {}
    source_of: dict[str, str] = {}
    for ids, sources, lengths in run.map(_id_lengths, [ref.uri for ref in refs]):
        for i, s, n in zip(ids, sources, lengths):
            length_of.setdefault(i, n)
            source_of.setdefault(i, s)
    return length_of, source_of


def _fetch(run, refs, chosen: dict[str, int]) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for part in run.map(_texts_of, [(ref.uri, chosen) for ref in refs]):
        for i, t in part.items():
            found.setdefault(i, t)
    return found


def _id_lengths(uri: str) -> tuple[list[str], list[str], list[int]]:
    t = read_shard(uri, ["id", "source", "text"])
    import pyarrow.compute as pc

    return (t.column("id").to_pylist(), t.column("source").to_pylist(),
            pc.fill_null(pc.utf8_length(t.column("text")), 0).to_pylist())


def _texts_of(job: tuple[str, dict[str, int]]) -> dict[str, tuple[str, str]]:
    uri, chosen = job
    t = read_shard(uri, ["id", "source", "text"])
    mask = pa.array([i in chosen for i in t.column("id").to_pylist()])
    t = t.filter(mask)
    return {i: (text, s) for i, text, s in zip(t.column("id").to_pylist(), t.column("text").to_pylist(),
                                                 t.column("source").to_pylist())}
