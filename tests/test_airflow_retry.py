"""An Airflow task retried after a partial failure is idempotent and resumes, through real Airflow.

The real corpus_refresh DAG (parsed from dags/, serialized to the metadata DB) runs under
``dag.test()`` with the retry policy from params.orchestration (retries 1, no delay); every task
but ``ingest`` is marked success, so only the data stage runs. Its first attempt is SIGKILLed
after two of its four shards are complete (a one-shot fault: ``PIPELINES_FAULT_ONCE``), Airflow
retries it, and the retried attempt must (a) skip the two finished shards without rewriting them
and (b) leave outputs and manifests byte-identical to an uninterrupted run of the same stage.
"""
from __future__ import annotations

import os
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.airflow_dags import load_dag
from tests.fixtures.crash_resume import SKIPPED, ingest_order, small_inputs
from tests.fixtures.outputs import snapshot
from tests.fixtures.project import copy_project

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, airflow_db, monkeypatch):
    root = copy_project(tmp_path / "project")
    params = small_inputs(yaml.safe_load((root / "params.yaml").read_text()))
    params["orchestration"].update(retries=1, retry_delay_s=0, max_retry_delay_s=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("PIPELINES_WORKSPACE", str(root))
    monkeypatch.setenv("PIPELINES_WORKERS", "1")  # kill points count per process: one process makes them exact
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(root / "dags"))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    return root


def uninterrupted_ingest(project: Path, dest: Path) -> dict[str, bytes]:
    """The reference: the same stage on the same params, run once without any fault, elsewhere."""
    dest.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        (dest / name).write_bytes((project / name).read_bytes())
    (dest / "samples").symlink_to(project / "samples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINES_FAULT")}
    env.update(PIPELINES_WORKSPACE=str(dest), PIPELINES_WORKERS="1")
    done = subprocess.run([sys.executable, "-m", "pipelines", "ingest"], cwd=dest, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return snapshot(dest / "data" / "ingest")


class StageLog(logging.Handler):
    """The task's log of its `dvc repro` child, one entry per attempt (each attempt logs "running [...]")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.attempts: list[list[str]] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("running ["):
            self.attempts.append([])
        if self.attempts:
            self.attempts[-1].append(message)


def test_a_retried_ingest_task_resumes_and_matches_an_uninterrupted_run(project, airflow_db, monkeypatch, tmp_path):
    marker = tmp_path / "fault-once"
    marker.touch()
    monkeypatch.setenv("PIPELINES_FAULT_KILL", "shard_done:2")  # after two of the four shards are complete
    monkeypatch.setenv("PIPELINES_FAULT_ONCE", str(marker))  # the first attempt consumes it: the retry runs clean

    dag = load_dag(project, "corpus_refresh")
    ingest = dag.task_dict["ingest.ingest"]
    assert ingest.retries == 1, "the retry policy must come from params.orchestration"

    stage_log = StageLog()
    logger = logging.getLogger("pipelines.orchestration.dvc_runner")
    logger.addHandler(stage_log)
    logger.setLevel(logging.INFO)
    try:
        run = dag.test(mark_success_pattern=r"(?!ingest\.ingest$).*")  # only the data stage really runs
    finally:
        logger.removeHandler(stage_log)
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert str(run.state) == "success", {k: str(t.state) for k, t in tis.items()}
    assert str(tis["ingest.ingest"].state) == "success"
    assert tis["ingest.ingest"].try_number == 2, "the first attempt must have failed and been retried"
    assert not marker.exists(), "the injected crash never fired"

    out = project / "data" / "ingest"
    assert not list(out.rglob(".tmp-*")), "the retry left temp files"
    # The retried attempt skipped exactly the shards the killed one had finished (the task's log).
    first, retried = ("\n".join(a) for a in stage_log.attempts)
    # SIGKILL reads as -9 when DVC's shell execs the stage, 137 when the shell reports it (CI's /bin/sh).
    assert re.search(r"exited with (-9|137)\b", first) and SKIPPED.findall(first) == []
    assert SKIPPED.findall(retried) == ingest_order(project)[:2]
    # ... and the outputs and manifests are exactly those of a run that never crashed.
    monkeypatch.delenv("PIPELINES_FAULT_KILL")
    assert snapshot(out) == uninterrupted_ingest(project, tmp_path / "reference")
    # DVC recorded the retried stage: the workspace is consistent for the next `dvc repro`.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert "ingest" in lock["stages"]
