"""What a failed task tells the operator: the stage, or for a gate each failed expectation
with its observed value, read from the report the gate wrote (reports/checks/<stage>.json)."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.checks.gate import report_path
from pipelines.checks.results import CheckResult


def gate_stage(task_stage: str) -> str:
    """`check_ingest` -> `ingest` (the gate's report is named after the stage it checks)."""
    return task_stage[len("check_"):] if task_stage.startswith("check_") else task_stage


def failure_summary(task_stage: str, is_gate: bool, root: Path, exception: BaseException | None = None) -> str:
    if not is_gate:
        tail = str(exception).strip().splitlines()[-1:] if exception else []
        return f"stage {task_stage} failed" + (f": {tail[0]}" if tail else "") + " (retried with backoff if attempts remain)"
    stage = gate_stage(task_stage)
    path = report_path(stage, Path(root))
    try:
        report = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        return f"gate {task_stage} failed before writing {path} ({type(e).__name__}): {exception}"
    failed = [c for c in report.get("checks") or [] if not c.get("success")]
    lines = [f"gate {task_stage} FAILED: {len(failed)} of {report.get('evaluated', len(report.get('checks') or []))} "
             f"expectations (not retried: a failed gate is not transient)"]
    lines += [f"  - {CheckResult(**c).describe()}" for c in failed]
    if report.get("data_docs"):
        lines.append(f"  Data Docs: {report['data_docs']}")
    lines.append(f"  report: reports/checks/{stage}.json")
    return "\n".join(lines)
