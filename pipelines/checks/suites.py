"""The parts every gate is made of: frames of a stage's output, each with a list of GX expectations.

A gate plan is a list of :class:`Batch` (a frame + its expectations, validated by GX)
and plain-Python file checks (manifest hashes, required files). Each stage's gate
(``pipelines/<stage>/gate.py``, found through ``pipelines/stages.py``) starts from
:func:`standard_plan` and adds what only it knows. All thresholds come from
``params.checks``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines import stages
from pipelines.checks import inputs
from pipelines.checks.gx_runner import import_gx
from pipelines.checks.results import CheckResult
from pipelines.core.runner import STATS

REQUIRED_COLUMNS = ["id", "url", "source", "text"]


@dataclass
class Batch:
    name: str  # GX asset/suite name, e.g. "stats"
    frame: pd.DataFrame
    expectations: list
    index_columns: list[str] = field(default_factory=list)  # name failing rows by these columns


@dataclass
class GatePlan:
    batches: list[Batch] = field(default_factory=list)
    file_checks: list[CheckResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth a look, not a failure (e.g. one damaged file of many)


def stage_checks(params: dict, stage: str) -> dict:
    return ((params.get("checks") or {}).get(stage)) or {}


def sample_rows(params: dict) -> int:
    return int((params.get("checks") or {}).get("sample_rows", 500))


def readable(plan: GatePlan, what: str, path: Path, root: Path, load):
    """Run ``load()``; an unreadable input becomes a failed check instead of a traceback."""
    try:
        return load()
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        plan.file_checks.append(CheckResult(batch="files", type=f"{what}_readable", column=None,
                                            kwargs={"path": inputs.rel(path, root)}, success=False,
                                            observed=f"{type(e).__name__}: {e}"))
        return None


# --- shared expectation lists ----------------------------------------------------------------------

def stats_expectations(min_records=None, unique_shards: bool = True) -> list:
    gx = import_gx()
    E = gx.expectations
    out = [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        # records_in == records_out + records_dropped on every shard.
        E.ExpectColumnValuesToBeBetween(column="unaccounted", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="records_out", min_value=0),
    ]
    if unique_shards:
        out.append(E.ExpectColumnValuesToBeUnique(column="shard"))
    if min_records is not None:
        out.append(E.ExpectColumnSumToBeBetween(column="records_out", min_value=int(min_records)))
    return out


def record_expectations(columns, unique_ids: bool = True) -> list:
    gx = import_gx()
    E = gx.expectations
    out = [
        E.ExpectTableColumnsToMatchSet(column_set=REQUIRED_COLUMNS, exact_match=False),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="id"),
        E.ExpectColumnValuesToNotBeNull(column="source"),
        E.ExpectColumnValuesToNotBeNull(column="text"),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1),
    ]
    if unique_ids:
        out.append(E.ExpectColumnValuesToBeUnique(column="id"))
    if "lang_score" in columns:
        out.append(E.ExpectColumnValuesToBeBetween(column="lang_score", min_value=0, max_value=1))
    return out


def standard_plan(stage: str, params: dict, root: Path, record_checks: tuple = ()) -> tuple[GatePlan, pd.DataFrame | None]:
    """What every record stage is held to: its manifest matches its files, every shard's records balance
    (in = out + dropped), enough records, and a sample of records has the required, sane columns.
    Returns the plan and the stats frame (for the stage's own rate checks)."""
    cfg = stage_checks(params, stage)
    stage_dir = stages.output_dir(stage, root)
    plan = GatePlan()
    if not stage_dir.is_dir():
        plan.file_checks.append(inputs.file_exists(stage_dir, root))
        return plan, None
    plan.file_checks.append(inputs.verify_manifest(stage_dir, root, params))
    stats = readable(plan, "stats", stage_dir / STATS, root, lambda: inputs.stats_frame(stage_dir))
    if stats is not None:
        plan.batches.append(Batch("stats", stats, stats_expectations(cfg.get("min_records")), ["shard"]))
    sample = readable(plan, "records", stage_dir, root, lambda: inputs.sample_records([stage_dir], sample_rows(params)))
    if sample is not None:
        plan.batches.append(Batch("sample", sample, record_expectations(sample.columns) + list(record_checks), ["id"]))
    return plan, stats


def totals_batch(stats: pd.DataFrame, expectations) -> Batch:
    """Corpus-level rates (keep rate, drop rate, each reason's share of the input) against ``expectations``,
    a function of the totals frame (its columns name the reasons)."""
    totals = inputs.totals_frame(stats)
    return Batch("totals", totals, expectations(totals))


def recorded(plan: GatePlan, what: str, path: Path, root: Path, observed: str) -> None:
    """A number the gate needs was not recorded where it should be: a failed file check naming it."""
    plan.file_checks.append(CheckResult(batch="files", type=what, column=None,
                                        kwargs={"path": inputs.rel(path, root)}, success=False, observed=observed))
