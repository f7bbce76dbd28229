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

from tests.fixtures.project import REPO, SAMPLES

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


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the session's SQLite metadata DB once."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       capture_output=True, env=dict(os.environ))
    return home


# A real two-node, token-authenticated Ray cluster on 127.0.0.1 (session-scoped; tests/test_ray_executor.py).
from tests.fixtures.ray_cluster import ray_cluster  # noqa: E402,F401
from tests.fixtures.moto_s3 import moto_s3  # noqa: E402,F401
