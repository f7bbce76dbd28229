"""Measure a packed phase directory (see pipelines/pack/format.py) against its index.json.

Each problem that names a file is reported as a string in a ``problem`` column
(null when fine), so a failed ``expect_column_values_to_be_null`` shows which
file is wrong and how.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.pack.format import INDEX

LINEAGE = "lineage.parquet"
_ROWS_PER_CHUNK = 4096  # bound memory while counting a memory-mapped shard


def _count_real_tokens(tokens: np.ndarray, pad_id: int) -> int:
    n = 0
    for start in range(0, tokens.shape[0], _ROWS_PER_CHUNK):
        n += int(np.count_nonzero(np.asarray(tokens[start:start + _ROWS_PER_CHUNK]) != pad_id))
    return n


def measure_phase(phase_dir: Path, phase: str, summary: dict | None) -> tuple[dict, list[dict]]:
    """One row for the phase (index vs arrays vs lineage vs pack.json) and one row per token shard."""
    row: dict = {"phase": phase, "problem": None, "n_seq": None, "seq_len": None, "tokens_index": None,
                 "tokens_counted": None, "fill_ratio": None, "token_mismatch": None, "n_seq_mismatch": None,
                 "lineage_mismatch": None, "summary_token_mismatch": None, "summary_fill_ratio": None}
    shards: list[dict] = []
    try:
        index = json.loads((phase_dir / INDEX).read_text())
        seq_len, pad_id = int(index["seq_len"]), int(index["pad_id"])
        n_seq, tokens_index = int(index["n_seq"]), int(index["tokens"])
        shard_entries = list(index["shards"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        row["problem"] = f"{phase}/{INDEX} unreadable: {type(e).__name__}: {e}"
        return row, shards
    counted, rows_seen = 0, 0
    for entry in shard_entries:
        name = str(entry.get("tokens"))
        listed = entry.get("n_seq")
        shard = {"phase": phase, "file": f"{phase}/{name}", "rows": None, "cols": None, "problem": None}
        try:
            tokens = np.load(phase_dir / name, mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError) as e:
            shard["problem"] = f"{phase}/{name}: cannot load ({type(e).__name__})"
            shards.append(shard)
            continue
        shard["rows"] = int(tokens.shape[0]) if tokens.ndim >= 1 else None
        shard["cols"] = int(tokens.shape[1]) if tokens.ndim == 2 else None
        if tokens.ndim != 2 or tokens.shape[1] != seq_len or (listed is not None and tokens.shape[0] != int(listed)):
            shard["problem"] = f"{phase}/{name}: shape {list(tokens.shape)} != index [{listed}, {seq_len}]"
        if tokens.ndim == 2:
            counted += _count_real_tokens(tokens, pad_id)
            rows_seen += int(tokens.shape[0])
        shards.append(shard)
    row.update(n_seq=n_seq, seq_len=seq_len, tokens_index=tokens_index, tokens_counted=counted,
               fill_ratio=counted / (n_seq * seq_len) if n_seq and seq_len else 0.0,
               token_mismatch=tokens_index - counted, n_seq_mismatch=n_seq - rows_seen)
    lineage = phase_dir / LINEAGE
    if lineage.exists():
        t = pq.read_table(lineage, columns=["start", "end"])
        covered = int(np.sum(t.column("end").to_numpy().astype(np.int64) - t.column("start").to_numpy().astype(np.int64)))
        row["lineage_mismatch"] = covered - counted
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
