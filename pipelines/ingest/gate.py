"""check_ingest: the standard record checks (manifest, balanced shards, enough records, sane sample)."""
from __future__ import annotations

from pathlib import Path

from pipelines.checks.suites import GatePlan, standard_plan


def plan(params: dict, root: Path) -> GatePlan:
    return standard_plan("ingest", params, root)[0]
