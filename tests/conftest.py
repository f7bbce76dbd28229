"""Shared fixtures: an isolated workspace (params.yaml + samples) per test, real sample data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Airflow reads its home when first imported: give the test session its own SQLite DB.
os.environ["AIRFLOW_HOME"] = os.environ.get("PIPELINES_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="airflow-test-")


class Workspace:
    """A temp project root: its own params.yaml, samples/ linked in, data/ written there."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def params(self) -> dict:
        return yaml.safe_load(self.params_path.read_text())

    def set_params(self, params: dict) -> None:
        self.params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    def update(self, dotted: str, value) -> dict:
        params = self.params()
        node = params
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
        self.set_params(params)
        return params

    def path(self, *parts) -> Path:
        return self.root.joinpath(*parts)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "samples").symlink_to(SAMPLES)
    monkeypatch.setenv("PIPELINES_WORKSPACE", str(root))
    monkeypatch.setenv("PIPELINES_WORKERS", "2")
    monkeypatch.chdir(root)
    return Workspace(root)


def copy_project(dest: Path) -> Path:
    """A fresh clone-like copy of the project (tracked + new files, no data/venv) as its own git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "models/", "metrics/", "reports/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "fresh clone"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the session's SQLite metadata DB once."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       capture_output=True, env=dict(os.environ))
    return home


UP_TO_DATE = "nothing to do"  # what the runner logs when a stage's outputs are current


def run_and_tell(run, params, caplog) -> tuple[dict, bool]:
    """Run a stage; returns (its summary, whether the runner found it up to date and skipped it)."""
    import logging

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.core.runner"):
        summary = run(params)
    return summary, UP_TO_DATE in caplog.text


# A real two-node, token-authenticated Ray cluster on 127.0.0.1 (session-scoped; tests/test_ray_executor.py).
from tests.fixtures.ray_cluster import ray_cluster  # noqa: E402,F401
from tests.fixtures.moto_s3 import moto_s3  # noqa: E402,F401
