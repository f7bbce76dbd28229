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


def resolve(path: str | Path, *, allow_outside: bool = False) -> Path:
    """A workspace-relative path; refuses anything that points outside the workspace.

    The check is on the path as written (normalised, symlinks not followed), so a
    workspace may link in a samples/ folder that lives elsewhere. ``allow_outside`` is
    for read-only inputs an operator configures in params.yaml (e.g. a local tokenizer).
    """
    root = workspace()
    joined = Path(os.path.normpath(root / Path(path)))
    if not allow_outside and joined != root and root not in joined.parents:
        raise ValueError(f"path {str(path)!r} is outside the workspace {root}")
    return joined
