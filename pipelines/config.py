"""Workspace and params: every knob lives in params.yaml, which DVC tracks."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

PARAMS_FILE = "params.yaml"


def workspace() -> Path:
    """The project root the stages run in (dvc.yaml, params.yaml, data/)."""
    env = os.environ.get("PIPELINES_WORKSPACE")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for p in [here, *here.parents]:
        if (p / "dvc.yaml").exists() and (p / PARAMS_FILE).exists():
            return p
    return here


def load_params(path: str | Path | None = None) -> dict:
    path = Path(path) if path else workspace() / PARAMS_FILE
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return params


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise KeyError(f"params.yaml has no '{name}' section")
    return params[name] or {}


def resolve(path: str | Path) -> Path:
    """A workspace-relative path; absolute paths must stay inside the workspace."""
    root = workspace()
    p = Path(path)
    p = (root / p).resolve() if not p.is_absolute() else p.resolve()
    return p
