"""check_ingest: the standard record checks, plus what each input file gave.

A crawl file that vanishes (all pages mislabelled, a reader stopping at the first odd byte) must not
look like a small corpus. Per input file the gate computes
- ``read_error_rate``: places that could not be read / (records read + those places);
- ``yield``: documents kept / records that could have been documents (WARC responses and
  conversions, a curated file's records); 0 for a file that gave nothing.
A file is *bad* when it crosses ``max_file_read_error_rate`` or ``min_file_yield``. Thresholds are
rates: the gate fails when more than ``max_bad_file_share`` of the files are bad (one bad file among
thousands passes), and warns, naming each file and byte offset, whenever any file is bad or has a
read error at all.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import stages
from pipelines.checks import inputs
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.suites import Batch, GatePlan, recorded, stage_checks, standard_plan
from pipelines.core.manifest import MANIFEST
from pipelines.core.runner import STATS

DEFAULTS = {"max_file_read_error_rate": 0.05, "min_file_yield": 0.1, "max_bad_file_share": 0.01}


def files_frame(stats: pd.DataFrame, shard_inputs: dict[str, str]) -> pd.DataFrame:
    """One row per input file: what was read, what it gave, and where reading failed."""
    def col(name: str) -> pd.Series:
        return stats[name] if name in stats.columns else pd.Series(0.0, index=stats.index)

    seen = sum((stats[c] for c in stats.columns if c.startswith("extra__seen_")), pd.Series(0.0, index=stats.index))
    records_read = seen.where(seen > 0, stats["records_in"])  # WARC records, or a curated file's records
    errors = col("extra__read_errors")
    payload = col("extra__payload_records")
    problems = stats["problems"] if "problems" in stats.columns else pd.Series([[]] * len(stats), index=stats.index)
    frame = pd.DataFrame({
        "shard": stats["shard"],
        "file": [shard_inputs.get(s, s) for s in stats["shard"]],
        "records_read": records_read.astype(int),
        "read_errors": errors.astype(int),
        "payload_records": payload.astype(int),
        "documents": stats["records_out"].astype(int),
    })
    tried = frame["records_read"] + frame["read_errors"]
    frame["read_error_rate"] = (frame["read_errors"] / tried.where(tried > 0)).fillna(0.0)
    frame["yield"] = (frame["documents"] / frame["payload_records"].where(frame["payload_records"] > 0)).fillna(0.0)
    frame["first_problem"] = [(list(p)[0] if p is not None and len(p) else "") for p in problems]
    return frame


def plan(params: dict, root: Path) -> GatePlan:
    gate, stats = standard_plan("ingest", params, root)
    if stats is None:
        return gate
    if "extra__payload_records" not in stats.columns:
        recorded(gate, "yield_recorded", stages.output_dir("ingest", root) / STATS, root,
                 "no payload_records in the stats: the per-file yield cannot be checked")
        return gate
    cfg = {**DEFAULTS, **{k: v for k, v in stage_checks(params, "ingest").items() if k in DEFAULTS}}
    manifest = inputs.load_json(stages.output_dir("ingest", root) / MANIFEST) or {}
    files = files_frame(stats, manifest.get("shard_inputs") or {})
    E = import_gx().expectations
    mostly = 1.0 - float(cfg["max_bad_file_share"])
    gate.batches.append(Batch("files", files, [
        E.ExpectColumnValuesToBeBetween(column="read_error_rate", max_value=float(cfg["max_file_read_error_rate"]),
                                        mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="yield", min_value=float(cfg["min_file_yield"]), mostly=mostly),
    ], ["file", "first_problem"]))
    for row in files.to_dict("records"):
        bad = []
        if row["read_error_rate"] > cfg["max_file_read_error_rate"]:
            bad.append(f"read error rate {row['read_error_rate']:.3f}")
        if row["yield"] < cfg["min_file_yield"]:
            bad.append(f"yield {row['yield']:.3f} ({row['documents']} documents of {row['payload_records']} records)")
        if bad or row["read_errors"]:
            where = f"; first at {row['first_problem']}" if row["first_problem"] else ""
            gate.warnings.append(f"{row['file']}: {', '.join(bad) or 'within thresholds'}; "
                                 f"{row['read_errors']} read errors{where}")
    return gate
