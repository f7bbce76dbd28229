"""Per-shard stage statistics -> ``_stats.parquet``.

One row per shard: records in / out / dropped, drops per reason (one
``drop__<reason>`` column per reason the stage has seen), bytes, and a
histogram of text lengths on fixed log-spaced bins. Gates run on this table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.core.atomic import atomic_path

# Text length bins in characters: [0,1), [1,2), [2,4) ... [2^24, inf).
LEN_BIN_EDGES = [0] + [2**i for i in range(25)]


def length_histogram(lengths) -> list[int]:
    lengths = np.asarray(lengths, dtype=np.int64)
    edges = np.asarray(LEN_BIN_EDGES + [np.iinfo(np.int64).max], dtype=np.int64)
    counts, _ = np.histogram(lengths, bins=edges)
    return counts.astype(np.int64).tolist()


@dataclass
class ShardStats:
    shard: str
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    len_hist: list[int] = field(default_factory=lambda: [0] * len(LEN_BIN_EDGES))
    extra: dict[str, float] = field(default_factory=dict)  # stage-specific numbers (e.g. skipped input records)
    problems: list[str] = field(default_factory=list)  # where the input could not be read, with offsets (capped)

    @property
    def records_dropped(self) -> int:
        return sum(self.drops.values())

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def to_dict(self) -> dict:
        return {
            "shard": self.shard,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "records_dropped": self.records_dropped,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": dict(sorted(self.drops.items())),
            "len_hist": list(self.len_hist),
            "extra": dict(sorted(self.extra.items())),
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ShardStats":
        return cls(
            shard=d["shard"], records_in=d["records_in"], records_out=d["records_out"],
            bytes_in=d.get("bytes_in", 0), bytes_out=d.get("bytes_out", 0),
            drops=dict(d.get("drops", {})), len_hist=list(d.get("len_hist", [])), extra=dict(d.get("extra", {})),
            problems=list(d.get("problems", [])),
        )


def stats_table(all_stats: list[ShardStats], known_reasons: list[str] | None = None) -> pa.Table:
    """Tabulate shard stats; every known reason gets a column even when its count is zero."""
    reasons = sorted(set(known_reasons or []) | {r for s in all_stats for r in s.drops})
    extras = sorted({k for s in all_stats for k in s.extra})
    rows = sorted(all_stats, key=lambda s: s.shard)
    cols: dict[str, pa.Array] = {
        "shard": pa.array([s.shard for s in rows], pa.string()),
        "records_in": pa.array([s.records_in for s in rows], pa.int64()),
        "records_out": pa.array([s.records_out for s in rows], pa.int64()),
        "records_dropped": pa.array([s.records_dropped for s in rows], pa.int64()),
        "bytes_in": pa.array([s.bytes_in for s in rows], pa.int64()),
        "bytes_out": pa.array([s.bytes_out for s in rows], pa.int64()),
    }
    for r in reasons:
        cols[f"drop__{r}"] = pa.array([s.drops.get(r, 0) for s in rows], pa.int64())
    for k in extras:
        cols[f"extra__{k}"] = pa.array([float(s.extra.get(k, 0.0)) for s in rows], pa.float64())
    cols["drops_json"] = pa.array([json.dumps(dict(sorted(s.drops.items()))) for s in rows], pa.string())
    cols["len_hist"] = pa.array([s.len_hist for s in rows], pa.list_(pa.int64()))
    cols["problems"] = pa.array([s.problems for s in rows], pa.list_(pa.string()))
    return pa.table(cols)


def write_stats(path: str | Path, all_stats: list[ShardStats], known_reasons: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    table = stats_table(all_stats, known_reasons)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def totals(all_stats: list[ShardStats]) -> dict:
    drops: dict[str, int] = {}
    for s in all_stats:
        for k, v in s.drops.items():
            drops[k] = drops.get(k, 0) + v
    return {
        "records_in": sum(s.records_in for s in all_stats),
        "records_out": sum(s.records_out for s in all_stats),
        "records_dropped": sum(drops.values()),
        "drops": dict(sorted(drops.items())),
    }


def read_stats(path: str | Path) -> list[ShardStats]:
    """``_stats.parquet`` back as one :class:`ShardStats` per shard (zero-count reason columns included)."""
    import pyarrow.parquet as pq

    if not Path(path).exists():
        return []
    rows = pq.read_table(path).to_pylist()
    out = []
    for r in rows:
        out.append(ShardStats(
            shard=r["shard"], records_in=r["records_in"], records_out=r["records_out"], bytes_in=r["bytes_in"],
            bytes_out=r["bytes_out"], drops=json.loads(r["drops_json"]), len_hist=list(r["len_hist"]),
            extra={k[len("extra__"):]: v for k, v in r.items() if k.startswith("extra__")},
            problems=list(r.get("problems") or [])))
    return out
