"""The `airflow` CLI with this project's settings, from anywhere in the repo.

A bare `airflow dags list` in the repo finds no configuration, creates ``~/airflow`` and asks for a
database migration. ``make airflow-cli ARGS="dags list"`` (``python -m pipelines.local_airflow.cli
dags list``) runs it with the workspace's ``AIRFLOW_HOME`` (``.airflow/``: on first use its SQLite DB is
migrated and the DAGs parsed into it), DAG and plugin folders; ``eval "$(make -s airflow-env)"`` (``... cli --env``) puts the same
settings into your shell, so a plain ``airflow ...`` works there too.
"""
from __future__ import annotations

import shlex
import sys

from pipelines.config import workspace
from pipelines.local_airflow.env import airflow_cli, airflow_env, ensure_db

EXPORTED = ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER",
            "AIRFLOW__CORE__LOAD_EXAMPLES", "PIPELINES_WORKSPACE")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = workspace()
    if argv == ["--env"]:
        env = airflow_env(root)
        print("\n".join(f"export {k}={shlex.quote(env[k])}" for k in EXPORTED))
        return 0
    if not (root / ".airflow" / "airflow.db").exists():
        ensure_db(root)
        # Airflow 3 lists DAGs from the metadata DB: parse them once so `dags list` shows them from the start.
        airflow_cli(["dags", "reserialize"], root, capture=True)
    return airflow_cli(argv or ["--help"], root, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
