"""Measure a packed phase directory (see pipelines/pack/format.py) against its index.json.

Each problem that names a file is reported as a string in a ``problem`` column
(null when fine), so a failed ``expect_column_values_to_be_null`` shows which
file is wrong and how. The structural invariants are counted per phase (0 = fine):

- ``padding_mismatch``: index ``padding`` != positions - non-pad tokens;
- ``pad_not_tail``: sequences with padding before a real token;
- ``lineage_gaps``: sequences whose lineage pieces do not tile ``[0, n_real)``
  exactly (every non-padding token in exactly one piece);
- ``incomplete_docs``: packed documents whose pieces do not add up to their tokens;
- ``needless_splits``: pieces beyond ``ceil(doc_tokens / seq_len)`` per document
  (best-fit packing cuts only documents longer than a sequence; null for concat).

``token_share_rows`` compares each source's token share with the blend's share.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.core.store import fetch_uri
from pipelines.mix.report import blend_rows
from pipelines.pack.format import INDEX

LINEAGE = "lineage.parquet"
_ROWS_PER_CHUNK = 4096  # bound memory while counting a memory-mapped shard


def _real_per_row(tokens: np.ndarray, pad_id: int) -> tuple[np.ndarray, int]:
    """(non-pad tokens per sequence, sequences with padding before a real token)."""
    real, bad = [], 0
    for start in range(0, tokens.shape[0], _ROWS_PER_CHUNK):
        chunk = np.asarray(tokens[start:start + _ROWS_PER_CHUNK]) != pad_id
        n = chunk.sum(axis=1)
        real.append(n)
        # A tail of padding: the first n positions are exactly the real ones.
        bad += int((chunk.cumsum(axis=1)[np.arange(len(n)), np.maximum(n - 1, 0)] != n)[n > 0].sum())
    return (np.concatenate(real) if real else np.zeros(0, np.int64)), bad


def _lineage_checks(lineage: Path, n_real: np.ndarray, seq_len: int, packing) -> dict:
    cols = pq.read_schema(lineage).names
    t = pq.read_table(lineage, columns=[c for c in ("seq", "start", "end", "record_id", "blend_copy",
                                                      "doc_offset", "doc_tokens") if c in cols]).to_pandas()
    out: dict = {"lineage_gaps": None, "incomplete_docs": None, "needless_splits": None}
    covered = int((t["end"].astype(np.int64) - t["start"].astype(np.int64)).sum())
    if "seq" in t:
        t = t.sort_values(["seq", "start"], kind="stable")
        seq, start, end = (t[c].to_numpy(np.int64) for c in ("seq", "start", "end"))
        first = np.r_[True, seq[1:] != seq[:-1]]
        last = np.r_[seq[1:] != seq[:-1], True]
        in_range = (seq >= 0) & (seq < len(n_real))
        bad = set(seq[~in_range].tolist())
        bad |= set(seq[first & (start != 0)].tolist())  # a sequence's first piece starts at 0
        bad |= set(seq[1:][~first[1:] & (start[1:] != end[:-1])].tolist())  # contiguous pieces
        bad |= set(seq[last & in_range & (end != n_real[np.clip(seq, 0, max(len(n_real) - 1, 0))])].tolist())
        bad |= set(np.setdiff1d(np.flatnonzero(n_real > 0), seq).tolist())  # real tokens without a piece
        out["lineage_gaps"] = len(bad)
    if {"record_id", "doc_offset", "doc_tokens"} <= set(t.columns):
        key = ["record_id"] + (["blend_copy"] if "blend_copy" in t else [])
        t["piece_len"] = t["end"].astype(np.int64) - t["start"].astype(np.int64)
        docs = t.groupby(key, sort=False).agg(pieces=("piece_len", "size"), tokens=("piece_len", "sum"),
                                              doc_tokens=("doc_tokens", "first"))
        out["incomplete_docs"] = int((docs["tokens"] != docs["doc_tokens"]).sum())
        if packing in (None, "best_fit"):
            needed = -(-docs["doc_tokens"].astype(np.int64) // seq_len)
            out["needless_splits"] = int(np.maximum(docs["pieces"] - needed, 0).sum())
    out["covered"] = covered
    return out


def measure_phase(phase_dir: Path, phase: str, summary: dict | None) -> tuple[dict, list[dict]]:
    """One row for the phase (index vs arrays vs lineage vs pack.json) and one row per token shard."""
    row: dict = {"phase": phase, "problem": None, "n_seq": None, "seq_len": None, "tokens_index": None,
                 "tokens_counted": None, "fill_ratio": None, "token_mismatch": None, "n_seq_mismatch": None,
                 "lineage_mismatch": None, "summary_token_mismatch": None, "summary_fill_ratio": None,
                 "padding_mismatch": None, "pad_not_tail": None, "lineage_gaps": None, "incomplete_docs": None,
                 "needless_splits": None}
    shards: list[dict] = []
    try:
        index = json.loads((phase_dir / INDEX).read_text())
        seq_len, pad_id = int(index["seq_len"]), int(index["pad_id"])
        n_seq, tokens_index = int(index["n_seq"]), int(index["tokens"])
        shard_entries = list(index["shards"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        row["problem"] = f"{phase}/{INDEX} unreadable: {type(e).__name__}: {e}"
        return row, shards
    counted, rows_seen, pad_not_tail, real_rows = 0, 0, 0, []
    for entry in shard_entries:
        name = str(entry.get("tokens"))
        listed = entry.get("n_seq")
        shard = {"phase": phase, "file": f"{phase}/{name}", "rows": None, "cols": None, "problem": None}
        try:
            tokens = np.load(fetch_uri((entry.get("uris") or {}).get("tokens") or str(phase_dir / name)), mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError) as e:
            shard["problem"] = f"{phase}/{name}: cannot load ({type(e).__name__})"
            shards.append(shard)
            continue
        shard["rows"] = int(tokens.shape[0]) if tokens.ndim >= 1 else None
        shard["cols"] = int(tokens.shape[1]) if tokens.ndim == 2 else None
        if tokens.ndim != 2 or tokens.shape[1] != seq_len or (listed is not None and tokens.shape[0] != int(listed)):
            shard["problem"] = f"{phase}/{name}: shape {list(tokens.shape)} != index [{listed}, {seq_len}]"
        if tokens.ndim == 2:
            real, bad = _real_per_row(tokens, pad_id)
            real_rows.append(real)
            counted += int(real.sum())
            pad_not_tail += bad
            rows_seen += int(tokens.shape[0])
        shards.append(shard)
    row.update(n_seq=n_seq, seq_len=seq_len, tokens_index=tokens_index, tokens_counted=counted,
               fill_ratio=counted / (n_seq * seq_len) if n_seq and seq_len else 0.0,
               token_mismatch=tokens_index - counted, n_seq_mismatch=n_seq - rows_seen,
               pad_not_tail=pad_not_tail)
    if isinstance(index.get("padding"), int):
        row["padding_mismatch"] = int(index["padding"]) - (rows_seen * seq_len - counted)
    lineage = phase_dir / LINEAGE
    if lineage.exists():
        n_real = np.concatenate(real_rows) if real_rows else np.zeros(0, np.int64)
        try:
            found = _lineage_checks(lineage, n_real, seq_len, index.get("packing"))
        except (OSError, ValueError, KeyError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on a bad file
            row["problem"] = f"{phase}/{LINEAGE} unreadable: {type(e).__name__}: {e}"
        else:
            row["lineage_mismatch"] = found.pop("covered") - counted
            row.update(found)
    else:
        row["problem"] = f"{phase}/{LINEAGE} missing"
    if isinstance(summary, dict):
        if isinstance(summary.get("tokens"), (int, float)):
            row["summary_token_mismatch"] = int(summary["tokens"]) - counted
        if isinstance(summary.get("fill_ratio"), (int, float)):
            row["summary_fill_ratio"] = float(summary["fill_ratio"])
    return row, shards


def phase_summaries(pack_summary) -> dict:
    """The per-phase dicts of pack.json, whether under "phases" or at the top level."""
    if not isinstance(pack_summary, dict):
        return {}
    phases = pack_summary.get("phases", pack_summary)
    return {k: v for k, v in phases.items() if isinstance(v, dict)} if isinstance(phases, dict) else {}


def token_share_rows(pack_dir: Path, phases, blend) -> list[dict]:
    """Per (phase, source): token share in the packed lineage vs the blend's (character) share."""
    want: dict[str, dict[str, float]] = {}
    for r in blend_rows(blend):
        if r.get("share") is not None:
            want.setdefault(r["phase"], {})[r["source"]] = float(r["share"])
    rows = []
    for phase in phases:
        lineage = Path(pack_dir) / phase / LINEAGE
        if phase not in want or not lineage.exists():
            continue
        try:
            t = pq.read_table(lineage, columns=["source", "start", "end"]).to_pandas()
        except (OSError, ValueError, KeyError):
            continue  # measure_phase reports the unreadable lineage
        t["n"] = t["end"].astype(np.int64) - t["start"].astype(np.int64)
        by_source = t.groupby("source")["n"].sum()
        total = int(by_source.sum()) or 1
        for source in sorted(set(by_source.index) | set(want[phase])):
            got = float(by_source.get(source, 0)) / total
            target = want[phase].get(source, 0.0)
            rows.append({"phase": phase, "source": source, "token_share": got, "blend_share": target,
                         "share_error": abs(got - target)})
    return rows
