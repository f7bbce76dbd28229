"""Run one DVC stage as a subprocess: argument lists only, never a shell string."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.runtime import quiet_threads

log = logging.getLogger(__name__)
STAGE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
# Environment variables whose values are credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, *_PASSWORD...).
SENSITIVE_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|_TOKEN$|API_KEY|CREDENTIALS?$", re.IGNORECASE)


def secret_values(env: dict[str, str]) -> list[str]:
    """Credential values present in ``env``, longest first (so no secret is redacted only in part)."""
    return sorted({v for k, v in env.items() if SENSITIVE_ENV.search(k) and len(v) >= 8}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


class StageFailed(RuntimeError):
    pass


def tool_env() -> dict[str, str]:
    """Environment for dvc/python children: this interpreter's bin dir first (DVC runs the first `python`)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    quiet_threads(env)
    return env


def dvc_executable() -> str:
    candidate = Path(sys.executable).parent / "dvc"
    return str(candidate) if candidate.exists() else "dvc"


def run_command(argv: list[str], cwd: str | Path, what: str) -> str:
    """Run argv in cwd, stream its output to the log, raise StageFailed with the tail on failure."""
    env = tool_env()
    secrets = secret_values(env)  # a child that prints a credential must not put it in the task log
    log.info("running %s in %s", argv, cwd)
    lines: list[str] = []
    with subprocess.Popen(argv, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:  # closes the pipe (no ResourceWarning) and waits
        assert proc.stdout is not None
        for line in proc.stdout:
            line = redact(line.rstrip("\n"), secrets)
            lines.append(line)
            log.info("%s | %s", what, line)
    rc = proc.returncode
    if rc != 0:
        tail = "\n".join(lines[-40:])
        raise StageFailed(f"{what} failed (exit {rc}):\n{tail}")
    return "\n".join(lines)


def repro_stage(stage: str, workspace: str | Path) -> str:
    """`dvc repro --single-item <stage>`: runs the stage only if its deps/params changed."""
    if not STAGE_NAME.match(stage):
        raise ValueError(f"invalid stage name {stage!r}")
    return run_command([dvc_executable(), "repro", "--single-item", stage], workspace, f"dvc stage {stage}")
