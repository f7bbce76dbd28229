"""What a failed task tells the operator: the stage, or for a gate each failed expectation
with its observed value, read from the report the gate wrote (reports/checks/<stage>.json)."""
from __future__ import annotations

import json
from pathlib import Path


def gate_stage(task_stage: str) -> str:
    """`check_ingest` -> `ingest` (the gate's report is named after the stage it checks)."""
    return task_stage[len("check_"):] if task_stage.startswith("check_") else task_stage


def _describe(check: dict) -> str:
    args = [f"column={check['column']}"] if check.get("column") else []
    args += [f"{k}={v}" for k, v in sorted((check.get("kwargs") or {}).items()) if k != "column"]
    observed = json.dumps(check.get("observed"), default=str)
    if len(observed) > 300:
        observed = observed[:297] + "..."
    return f"{check.get('type')}({', '.join(args)}) on {check.get('batch')}: observed {observed}"


def failure_summary(task_stage: str, is_gate: bool, root: Path, exception: BaseException | None = None) -> str:
    if not is_gate:
        tail = str(exception).strip().splitlines()[-1:] if exception else []
        return f"stage {task_stage} failed" + (f": {tail[0]}" if tail else "") + " (retried with backoff if attempts remain)"
    stage = gate_stage(task_stage)
    path = Path(root) / "reports" / "checks" / f"{stage}.json"
    try:
        report = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        return f"gate {task_stage} failed before writing {path} ({type(e).__name__}): {exception}"
    failed = [c for c in report.get("checks") or [] if not c.get("success")]
    lines = [f"gate {task_stage} FAILED: {len(failed)} of {report.get('evaluated', len(report.get('checks') or []))} "
             f"expectations (not retried: a failed gate is not transient)"]
    lines += [f"  - {_describe(c)}" for c in failed]
    if report.get("data_docs"):
        lines.append(f"  Data Docs: {report['data_docs']}")
    lines.append(f"  report: reports/checks/{stage}.json")
    return "\n".join(lines)
