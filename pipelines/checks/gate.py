"""``run_gate(stage, params)``: validate a stage output, write ``reports/checks/<stage>.json``, fail loudly.

The JSON report is a DVC dependency of the next stage, so it is deterministic:
no timestamps or run ids, checks in a fixed order, plain JSON values. GX Data
Docs (HTML, timestamped by GX) go to ``reports/gx/<stage>/`` and are not.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from pipelines.checks.gx_runner import import_gx, validate
from pipelines.checks.suites import sample_rows, stage_checks
from pipelines import stages
from pipelines.config import workspace
from pipelines.core.atomic import write_json_atomic

log = logging.getLogger(__name__)
REPORT_DIR = Path("reports") / "checks"
DOCS_DIR = Path("reports") / "gx"


class GateFailed(RuntimeError):
    """An expectation of a gate failed; the message names each failure and what was observed."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


def report_path(stage: str, root: Path | None = None) -> Path:
    return (root or workspace()) / REPORT_DIR / f"{stage}.json"


def _exceptions(check) -> int:
    """Rows a passing expectation did not like (only possible with ``mostly`` < 1)."""
    observed = check.observed
    return int(observed.get("unexpected_count") or 0) if isinstance(observed, dict) else 0


def run_gate(stage: str, params: dict) -> dict:
    import_gx()  # slow (5-15 s) once per process; timed apart from the gate itself
    started = time.monotonic()
    root = workspace()
    plan = stages.gate_plan(stage, params, root)
    checks_cfg = params.get("checks") or {}
    docs_dir = root / DOCS_DIR / stage if checks_cfg.get("data_docs", True) else None
    gx_results, docs_built = validate(stage, plan.batches, docs_dir)
    checks = gx_results + plan.file_checks
    failed = [c for c in checks if not c.success]
    warnings = plan.warnings + [f"passed with exceptions: {c.describe()}" for c in checks if c.success and _exceptions(c)]
    for w in warnings:
        log.warning("check_%s: %s", stage, w)
    report = {
        "stage": stage,
        "success": not failed,
        "evaluated": len(checks),
        "failed": len(failed),
        "thresholds": {"sample_rows": sample_rows(params), **stage_checks(params, stage)},
        "checks": [c.to_dict() for c in checks],
        "warnings": warnings,
        "data_docs": (DOCS_DIR / stage / "index.html").as_posix() if docs_built else None,
    }
    write_json_atomic(report_path(stage, root), report)
    if docs_dir is not None:  # reports/gx/index.html: the six stage sites, each with its gate's last result
        from pipelines.checks.data_docs import write_index

        write_index(root / DOCS_DIR, stages.names(), report_path(stage, root).parent)
    log.info("check_%s: %d checks, %d failed (%.1fs)", stage, len(checks), len(failed), time.monotonic() - started)
    if failed:
        lines = [f"check_{stage} FAILED: {len(failed)} of {len(checks)} checks"]
        lines += [f"  - {c.describe()}" for c in failed]
        lines.append(f"  report: {(REPORT_DIR / f'{stage}.json').as_posix()}")
        raise GateFailed("\n".join(lines), report)
    return report
