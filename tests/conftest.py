"""Shared fixtures: an isolated workspace (params.yaml + samples) per test, real sample data."""
from __future__ import annotations

import os
import shutil
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
