"""Environment for running this project's Airflow locally (SQLite metadata DB in the workspace)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.orchestration.dvc_runner import tool_env


def airflow_env(root: Path, home: Path | None = None) -> dict[str, str]:
    env = tool_env()
    home = Path(home or root / ".airflow")
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(root) / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path(root) / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "2"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "PIPELINES_WORKSPACE": str(Path(root).resolve()),
    })
    return env


def airflow_cli(args: list[str], root: Path, *, check: bool = True, capture: bool = False, home: Path | None = None,
                log: Path | None = None):
    """Run the `airflow` CLI of this interpreter's environment (``log``: its output streams into that file)."""
    exe = Path(sys.executable).parent / "airflow"
    if log is not None:
        with open(log, "w") as out:
            return subprocess.run([str(exe), *args], cwd=root, env=airflow_env(root, home), check=check, stdout=out,
                                  stderr=subprocess.STDOUT, text=True)
    return subprocess.run([str(exe), *args], cwd=root, env=airflow_env(root, home), check=check,
                          capture_output=capture, text=True)


def ensure_db(root: Path, home: Path | None = None) -> None:
    home = Path(home or root / ".airflow")
    if not (home / "airflow.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        airflow_cli(["db", "migrate"], root, capture=True, home=home)
